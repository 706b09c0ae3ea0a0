"""Continuous-target average precision (CoTAP: Wen et al., "Semantic Concentration for Self-Supervised
Dense Representations Learning", IEEE TPAMI 2025, arXiv 2509.09429; github.com/KID-7391/CoTAP).

No official code of this loss could be read: this module follows a reconstruction from the paper's
abstract and the authors' earlier smoothed-AP code (KID-7391/SOPRC, `losses/smooth_ap_loss.py`: a
sigmoid step with a temperature; SOPRC clamps the exponent to ±50 against overflow, which
`torch.sigmoid` does not need: the values agree in float32). For a query i with candidate scores
S_i (C,) and continuous relevance targets Y_i (C,) in [0, 1]:

    H(x)    = sigmoid(x / τ),  H(0) := 1 for the item itself
    rank_j  = Σ_k H(S_ik − S_ij)                     soft rank of candidate j (1 = top)
    prec_j  = Σ_k Y_ik H(S_ik − S_ij) / rank_j        graded precision at j's rank
    AP_i    = Σ_j Y_ij prec_j / Σ_j Y_ij
    L       = 1 − mean_i AP_i

With binary targets and a hard step (τ -> 0) AP_i is the standard average precision, so the loss needs
no threshold on the targets ("decision-agnostic"), and the rank-based weights put the gradient on the
top of the list ("adaptive focusing"). For continuous targets the best ordering (by Y) scores below 1;
`normalize=True` divides AP_i by that ideal value (an nDCG-style variant).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def continuous_average_precision(scores: Tensor, targets: Tensor, temperature: float = 0.01) -> Tensor:
    """scores (Q, C) and targets (Q, C) in [0, 1] -> AP (Q,) with sigmoid-smoothed ranks; NaN for a
    query whose targets are all zero. Memory is Q * C * C: callers chunk over queries."""
    scaled, targets = scores.float() / temperature, targets.float()
    step = torch.sigmoid(scaled.unsqueeze(1) - scaled.unsqueeze(2))  # [q, j, k] = H(S_qk - S_qj)
    # the diagonal holds sigmoid(0) = 1/2; an item ranks at or below itself, H(0) := 1: add the other 1/2
    rank = step.sum(-1) + 0.5  # (Q, C)
    precision = (torch.bmm(step, targets.unsqueeze(-1)).squeeze(-1) + 0.5 * targets) / rank
    relevance = targets.sum(-1)
    return (targets * precision).sum(-1) / relevance.masked_fill(relevance == 0, float("nan"))


def ideal_average_precision(targets: Tensor) -> Tensor:
    """targets (Q, C) -> the hard-step AP (Q,) of the ordering by target, the largest AP any scores give."""
    ordered = targets.float().sort(dim=-1, descending=True).values
    positions = torch.arange(1, ordered.shape[-1] + 1, device=ordered.device, dtype=ordered.dtype)
    precision = ordered.cumsum(-1) / positions
    relevance = ordered.sum(-1)
    return (ordered * precision).sum(-1) / relevance.masked_fill(relevance == 0, float("nan"))


class ContinuousAPLoss(nn.Module):
    """1 − mean AP over queries with at least one non-zero target.

    scores (..., Q, C): similarity of each query to each candidate (student query vs teacher keys);
    targets (..., Q, C) in [0, 1]: continuous relevance, from the teacher, no gradient. Leading
    dimensions (batch) are flattened into queries; `chunk_size` queries are ranked at a time.
    """

    def __init__(self, temperature: float = 0.01, normalize: bool = False, chunk_size: int = 1024) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"the rank temperature must be positive, got {temperature}")
        self.temperature, self.normalize, self.chunk_size = temperature, normalize, chunk_size

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        scores = scores.reshape(-1, scores.shape[-1])
        targets = targets.detach().reshape(-1, targets.shape[-1]).float()
        ap = torch.cat([
            continuous_average_precision(scores[i : i + self.chunk_size], targets[i : i + self.chunk_size], self.temperature)
            for i in range(0, len(scores), self.chunk_size)
        ])
        if self.normalize:
            ap = ap / ideal_average_precision(targets)
        valid = ~torch.isnan(ap)
        if not valid.any():
            raise ValueError("continuous AP needs at least one query with a non-zero target")
        return 1.0 - ap[valid].mean()
