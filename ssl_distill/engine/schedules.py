"""Per-iteration schedules, precomputed as arrays indexed by the global step (dinov2 style), so a
resumed run gets exactly the values an uninterrupted one would."""

from __future__ import annotations

import numpy as np


def warmup_cosine(start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_from: float = 0.0) -> np.ndarray:
    """Linear warmup from `warmup_from` to `start` over warmup_steps, then half-cosine to `end`."""
    warmup_steps = min(warmup_steps, total_steps)
    warmup = np.linspace(warmup_from, start, warmup_steps, endpoint=False)
    decay_steps = total_steps - warmup_steps
    progress = np.arange(decay_steps) / max(decay_steps, 1)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * progress))
    return np.concatenate([warmup, cosine])
