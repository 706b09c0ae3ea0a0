"""DMAE (Bai et al., CVPR 2023, "Masked Autoencoders Enable Efficient Knowledge Distillers"), after the
official `models_mae_distill.py` / `engine_distill.py`. See docs/methods/dmae.md.

One random mask per step is shared by teacher and student. The frozen MAE teacher encodes only the
visible tokens and stops after its deepest tapped block. Each student tap (pre-norm, class token
included) goes through its own Linear adapter (PyTorch default init) and is compared with the teacher
tap by L1 between L2-normalised tokens; the student also reconstructs the hidden patches (raw pixels in
the official script: `norm_pix_loss: false` by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ssl_distill.errors import ConfigError
from ssl_distill.losses import NormalizedL1Loss
from ssl_distill.modules.teacher import FrozenTeacher, TeacherConfig, load_teacher_backbone
from ssl_distill.objectives.base import MaskedModelingConfig, MaskedModelingObjective, Output
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import ranged


@dataclass
class DMAEConfig(MaskedModelingConfig):
    name: str = "dmae"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    norm_pix_loss: bool = False
    student_blocks: list[int] | None = None  # 0-based; None = the block at 3/4 depth (8 of 12)
    teacher_blocks: list[int] | None = None  # 0-based; None = the block at 3/4 depth (17 of 24)
    reconstruction_weight: float = ranged(1.0, "[0, inf)")
    distillation_weight: float = ranged(1.0, "[0, inf)")


def three_quarter_block(depth: int) -> int:
    return depth * 3 // 4 - 1


@OBJECTIVES.register("dmae")
class DMAE(MaskedModelingObjective):
    """batch['views'][0]: (B, C, H, W) -> reconstruction + feature distillation."""

    Config = DMAEConfig

    def build_teachers(self) -> None:
        o = self.cfg.objective
        self.student_blocks = list(o.student_blocks or [three_quarter_block(self.backbone.depth)])
        teacher = load_teacher_backbone(o.teacher)
        self.teacher_blocks = list(o.teacher_blocks or [three_quarter_block(teacher.depth)])
        if len(self.teacher_blocks) != len(self.student_blocks):
            raise ConfigError(
                f"objective.student_blocks {self.student_blocks} and objective.teacher_blocks "
                f"{self.teacher_blocks} must pair up one to one"
            )
        if teacher.grid_size != self.backbone.grid_size:
            raise ConfigError(
                f"teacher patch grid {teacher.grid_size} differs from the student's "
                f"{self.backbone.grid_size}: DMAE compares tokens at the same positions"
            )
        self.teacher = FrozenTeacher(teacher, self.teacher_blocks)
        self.adapters = nn.ModuleList(nn.Linear(self.backbone.embed_dim, teacher.embed_dim) for _ in self.student_blocks)
        self.distance = NormalizedL1Loss()

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        o = self.cfg.objective
        images = self.inputs(batch)
        idx_keep = self.sample_mask(images)
        targets = self.teacher(images, idx_keep)
        student = self.reconstruct(images, idx_keep, taps=self.student_blocks)
        distillation = sum(
            self.distance(targets[t], adapter(student.encoded.taps[s]))
            for s, t, adapter in zip(self.student_blocks, self.teacher_blocks, self.adapters)
        )
        loss = o.reconstruction_weight * student.loss + o.distillation_weight * distillation
        return Output(loss, {"reconstruction": student.loss.detach(), "distillation": distillation.detach()})
