"""Object-aware filter (CoTAP: Wen et al., IEEE TPAMI 2025, arXiv 2509.09429): patch embeddings are
re-expressed through learnable object prototypes by cross-attention.

Certain (the paper's abstract and README): patches are represented by learnable object prototypes via
cross-attention. Reconstructed (no official code was readable), each a constructor argument: patches are
the queries, the prototypes the keys and values, with cosine attention at a temperature (as prototype
assignments are scored in SwAV and Leopart, τ = 0.1),

    A = softmax(cos(q(z), k(P)) / temperature)    (B, N, M)
    ẑ = A v(P)  (+ z with `residual`)             (B, N, d)

so each patch output is a convex combination of object embeddings and patches that attend to the same
objects become alike. Cosine logits keep the attention from starting uniform (scaled dot products of
freshly initialised projections are ~0, which maps every patch to the same mixture and leaves nothing to
rank). The teacher holds an EMA copy of the whole filter (prototypes and projections).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ObjectAwareFilter(nn.Module):
    """z (B, N, d) -> (ẑ (B, N, d), attention A (B, N, M)) over `num_prototypes` learnable prototypes."""

    def __init__(self, dim: int, num_prototypes: int, temperature: float = 0.1, residual: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"the object-aware filter's temperature must be positive, got {temperature}")
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim) / math.sqrt(dim))
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.temperature, self.residual = temperature, residual

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        query, key = F.normalize(self.query(z), dim=-1), F.normalize(self.key(self.prototypes), dim=-1)
        attention = torch.softmax(query @ key.T / self.temperature, dim=-1)
        filtered = attention @ self.value(self.prototypes)
        return (filtered + z if self.residual else filtered), attention
