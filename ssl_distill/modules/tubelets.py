"""Tubelet pixel targets for video masked autoencoding (VideoMAE, Tong et al., NeurIPS 2022)."""

from __future__ import annotations

from torch import Tensor


def tubelet_targets(
    video: Tensor, tubelet_size: int, patch_size: int, norm_pix: bool = True, eps: float = 1e-6
) -> Tensor:
    """(B, C, T, H, W) -> (B, L, t * p * p * C) pixels per tubelet, in the video ViT's t-major token order.

    With `norm_pix` each tubelet is standardised per channel over its t * p * p pixels (unbiased
    std, eps added after the square root), VideoMAE's default target (official
    `engine_for_pretraining.py`, `normlize_target`).
    """
    b, c, t, h, w = video.shape
    grid = (t // tubelet_size, h // patch_size, w // patch_size)
    x = video.reshape(b, c, grid[0], tubelet_size, grid[1], patch_size, grid[2], patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, grid[0] * grid[1] * grid[2], -1, c)  # (B, L, t*p*p, C)
    if norm_pix:
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, keepdim=True).sqrt() + eps)
    return x.flatten(2)
