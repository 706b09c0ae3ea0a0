"""Tubelet pixel targets for video masked autoencoding (VideoMAE, Tong et al., NeurIPS 2022)."""

from __future__ import annotations

from torch import Tensor


def tubelet_pixels(video: Tensor, tubelet_size: int, patch_size: int) -> Tensor:
    """(B, C, T, H, W) -> (B, L, t * p * p * C) pixels per tubelet, in the video ViT's t-major token order
    (channel last inside a tubelet)."""
    b, c, t, h, w = video.shape
    grid = (t // tubelet_size, h // patch_size, w // patch_size)
    x = video.reshape(b, c, grid[0], tubelet_size, grid[1], patch_size, grid[2], patch_size)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, grid[0] * grid[1] * grid[2], -1)


def normalize_tubelets(pixels: Tensor, channels: int, eps: float = 1e-6) -> Tensor:
    """(B, L, t * p * p * C) tubelet pixels (channel last) -> the same, each tubelet standardised per
    channel over its t * p * p pixels (unbiased std, eps added after the square root): VideoMAE's
    default target (official `engine_for_pretraining.py`, `normlize_target`).

    Each tubelet is first shifted by its own first pixel, which changes neither its centred values nor its
    variance in exact arithmetic, but makes a constant tubelet (the black outside an echo sector) exactly
    zero: the official order, x - mean(x), leaves the float32 rounding of the mean (2-5e-7 for ImageNet-
    normalised black), which the division by eps = 1e-6 turns into targets of +-0.2-0.5 instead of 0."""
    x = pixels.unflatten(-1, (-1, channels))
    x = x - x[..., :1, :]
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, keepdim=True).sqrt() + eps)
    return x.flatten(-2)
