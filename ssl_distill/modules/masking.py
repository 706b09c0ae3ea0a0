"""Token masks as sequence-space kept indices (0 = class token, patch p = p + 1), lightly's convention."""

from __future__ import annotations

import torch
from torch import Tensor


def tube_mask(
    batch: int,
    grid_size: tuple[int, int, int],
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """VideoMAE tube masking: per sample, int(ratio * H'W') spatial positions are hidden in every
    time slice. Returns idx_keep (B, 1 + T' * keep), class token first, then the kept patches in
    t-major order (patch = t * H'W' + spatial)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}")
    slices, height, width = grid_size
    spatial = height * width
    keep = spatial - int(ratio * spatial)
    noise = torch.rand(batch, spatial, generator=generator, device=generator.device if generator else device)
    kept = noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, keep)
    offsets = torch.arange(slices, device=kept.device) * spatial
    patches = (offsets[None, :, None] + kept[:, None, :]).flatten(1)  # (B, T' * keep)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=kept.device), patches + 1], dim=1)


def keep_by_score(scores: Tensor, ratio: float, stochastic: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Redundant token masking (Hybrid Distillation's, reconstructed): drop the patches a teacher scores
    lowest. scores (B, L) >= 0 (e.g. class-token attention to each patch) -> idx_keep (B, 1 + K), K =
    int(L * (1 - ratio)) (MAE's count), sequence indices ascending with the class token first. Deterministic
    top-K, or with `stochastic` K patches drawn without replacement with probability proportional to score."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"drop ratio must lie in [0, 1), got {ratio}")
    batch, length = scores.shape
    keep = max(int(length * (1 - ratio)), 1)
    if stochastic:
        kept = torch.multinomial(scores.float().clamp_min(1e-12), keep, replacement=False, generator=generator)
    else:
        kept = scores.topk(keep, dim=1).indices
    kept = kept.sort(dim=1).values + 1
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=scores.device), kept], dim=1)
