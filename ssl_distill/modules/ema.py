"""EMA teachers for self-distillation (BYOL, DINO and the methods built on them).

`frozen_copy` makes a teacher from a student: the same weights, stochastic depth off, no gradient, and
eval mode for good (`frozen = True`: the objective keeps it there whatever its own mode). `EMA` holds the declared
student -> teacher pairs and moves every teacher once per optimizer step, θ_t <- m θ_t + (1 - m) θ_s,
with m on a per-step cosine schedule (lightly's `cosine_schedule` and `update_momentum`).
"""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from timm.layers import DropPath
from torch import Tensor, nn


def frozen_copy(module: nn.Module, running_stats: bool = False) -> nn.Module:
    """A deep copy of `module` with no gradient, no stochastic depth, in eval mode, marked `frozen`.

    BatchNorm layers of the copy keep normalising with the statistics of the batch they see (no running
    averages): the official DINO teacher runs in train mode, so a BN head normalises the teacher batch
    by its own statistics, and an EMA of parameters would never move running averages anyway. With
    `running_stats` they keep their running averages instead (which `EMA` moves with the parameters), as a
    CNN backbone needs for evaluation and export.
    Tensors that a module caches from its parameters (the `weight` that the old `weight_norm` recomputes
    before each forward, as in lightly's DINO heads) are not leaves and cannot be deep-copied: they are
    copied detached, and the hook recomputes them in the copy."""
    memo = {
        id(value): value.detach().clone()
        for sub in module.modules()
        for value in vars(sub).values()
        if isinstance(value, Tensor) and not value.is_leaf
    }
    teacher = copy.deepcopy(module, memo)
    for sub in teacher.modules():
        if isinstance(sub, DropPath):
            sub.drop_prob = 0.0
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not running_stats:
            sub.track_running_stats = False
            sub.running_mean = sub.running_var = sub.num_batches_tracked = None
    teacher.frozen = True
    return teacher.requires_grad_(False).eval()


class EMA:
    """Student -> teacher pairs updated together after each optimizer step.

    The momentum at step s is `cosine_schedule(s, total_steps, start, end)`: `start` at step 0, `end` at the
    last step (DINO: 0.996 -> 1; constant when start == end). Not a module: the objective owns the students
    and teachers (so their state-dict names are the objective's); this object only remembers the pairs.
    """

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start, self.end, self.total_steps = start, end, total_steps
        self.pairs: list[tuple[nn.Module, nn.Module]] = []
        self.buffer_pairs: list[tuple[nn.Module, nn.Module]] = []

    def copy(self, student: nn.Module, running_stats: bool = False) -> nn.Module:
        """A frozen teacher copy of `student`, registered for the EMA update. With `running_stats` its
        BatchNorm running averages follow the student's by the same EMA (timm's `ModelEmaV3` does the
        same), so a CNN teacher evaluates and exports with running statistics."""
        teacher = frozen_copy(student, running_stats)
        self.pairs.append((student, teacher))
        if running_stats:
            self.buffer_pairs.append((student, teacher))
        return teacher

    @property
    def teachers(self) -> list[nn.Module]:
        return [teacher for _, teacher in self.pairs]

    def momentum(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.start, self.end)

    @torch.no_grad()
    def update(self, step: int) -> None:
        momentum = self.momentum(step)
        for student, teacher in self.pairs:
            update_momentum(student, teacher, m=momentum)
        for student, teacher in self.buffer_pairs:
            for ours, theirs in zip(teacher.buffers(), student.buffers()):
                if ours.is_floating_point():
                    ours.lerp_(theirs, 1.0 - momentum)
                else:
                    ours.copy_(theirs)
