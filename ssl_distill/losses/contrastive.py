"""Symmetric image-text InfoNCE (CLIP, Radford et al., ICML 2021), open_clip's `ClipLoss`, as TIPS uses
it once per caption stream (Maninis et al., ICLR 2025, eq. 1; no projection heads)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor, nn


class ImageTextContrastiveLoss(nn.Module):
    """½ [CE(Ê T̂ᵀ / τ, I) + CE(T̂ Êᵀ / τ, I)], in-batch negatives (gathered over ranks under DDP).

    image, text: (B, D) embeddings, L2-normalised here; temperature: τ, a scalar (tensor or float).
    """

    def __init__(self) -> None:
        super().__init__()
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.clip = ClipLoss(local_loss=False, gather_with_grad=world > 1, rank=rank, world_size=world)

    def forward(self, image: Tensor, text: Tensor, temperature: Tensor | float) -> Tensor:
        dtype = torch.promote_types(image.dtype, torch.float32)  # float32 at least (autocast), float64 kept
        image, text = F.normalize(image.to(dtype), dim=-1), F.normalize(text.to(dtype), dim=-1)
        return self.clip(image, text, 1.0 / temperature)
