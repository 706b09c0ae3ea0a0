"""Per-step scalar schedules objectives use (EMA momentum comes from lightly's cosine_schedule)."""

from __future__ import annotations


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """`start` at step 0, linearly to `end` at `warmup_steps`, then `end` (DINO's teacher temperature)."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
