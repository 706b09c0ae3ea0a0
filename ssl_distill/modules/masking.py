"""Token masks as sequence-space kept indices (0 = class token, patch p = p + 1), lightly's convention,
and boolean patch masks (True = hidden) for masking in pixel space."""

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


def random_patch_mask(
    batch: int, num_patches: int, ratio: float, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """(B, L) bool, True on exactly int(ratio * L) patches per sample, drawn independently per sample
    (MRDD's `mask_image`: `rand(B, L).argsort()`, the first int(r L) hidden)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}")
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device if generator else device)
    hidden = noise.argsort(dim=1)[:, : int(ratio * num_patches)]
    return torch.zeros(batch, num_patches, dtype=torch.bool, device=noise.device).scatter_(1, hidden, True)


def zero_patches(images: Tensor, mask: Tensor, patch_size: int) -> Tensor:
    """images (B, C, H, W) with the patches where mask (B, L) is True set to 0 (MRDD: masked in [0, 1]
    pixel space, no mask token; the encoder sees the whole zero-filled image)."""
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size or mask.shape[1] != (h // patch_size) * (w // patch_size):
        raise ValueError(f"a {tuple(mask.shape)} patch mask does not fit {h}x{w} images in {patch_size}-pixel patches")
    keep = (~mask.bool()).to(images.dtype).view(b, 1, h // patch_size, 1, w // patch_size, 1)
    grid = images.view(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return (grid * keep).view(b, c, h, w)
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
