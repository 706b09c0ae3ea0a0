"""Per-iteration schedules, indexed by the global step (dinov2 style), so a resumed run gets exactly the
values an uninterrupted one would: the trainer's learning rate and weight decay (precomputed arrays) and
objectives' teacher temperatures (a function of the step). EMA momenta use lightly's `cosine_schedule`
(see `ssl_distill.modules.ema`)."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_from: float = 0.0) -> np.ndarray:
    """Linear warmup from `warmup_from` to `start` over warmup_steps, then half-cosine to `end`."""
    warmup_steps = min(warmup_steps, total_steps)
    warmup = np.linspace(warmup_from, start, warmup_steps, endpoint=False)
    decay_steps = total_steps - warmup_steps
    progress = np.arange(decay_steps) / max(decay_steps, 1)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * progress))
    return np.concatenate([warmup, cosine])


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """`start` at step 0, linearly to `end` at `warmup_steps`, then `end` (DINO's teacher temperature)."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps



RAMPS = ("linear", "cosine", "step", "constant")


def ramp(step: int, total_steps: int, start: float, end: float, kind: str = "linear", begin: float = 0.0, finish: float = 1.0) -> float:
    """`start` until fraction `begin` of training, then to `end` by fraction `finish` (linearly, along a
    half-cosine, or in one jump at `finish` for 'step'), then `end`; 'constant' is `end` throughout."""
    if kind not in RAMPS:
        raise ValueError(f"ramp kind must be one of {RAMPS}, got '{kind}'")
    progress = step / max(total_steps, 1)
    if kind == "constant" or progress >= finish:
        return end
    if progress < begin or kind == "step":
        return start
    t = (progress - begin) / (finish - begin)
    if kind == "cosine":
        t = 0.5 * (1 - math.cos(math.pi * t))
    return start + (end - start) * t
