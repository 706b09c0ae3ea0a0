"""Learnable prototypes on the unit sphere for online clustering (SwAV, DISCOVR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Prototypes(nn.Module):
    """K prototype vectors (K, D), drawn from a standard normal and kept at unit norm.

    `forward` gives cosine scores; `normalize_` re-projects the vectors onto the sphere in place,
    without gradient (DISCOVR official `modeling_pretrain.py`, done there at every forward; the
    objective does it after every optimizer step).
    """

    def __init__(self, num_prototypes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_prototypes, dim))
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) features -> (..., K) cosine similarities to the prototypes."""
        return F.normalize(x, dim=-1) @ self.weight.T
