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

CPU_CHUNK_ELEMENTS = 2**20  # on CPU a (chunk, C, C) step tensor of 4 MB stays in cache: 1.7-2.6x faster than 16 MB+


class _SoftRankSums(torch.autograd.Function):
    """scaled scores (Q, C), targets (Q, C), queries per chunk -> (Q, 2, C): for each candidate j,
    Σ_k H(s_k − s_j) and Σ_k H(s_k − s_j) t_k, with the diagonal at sigmoid(0) = 1/2.

    The same values autograd gets from `sigmoid(s[:, None, :] - s[:, :, None])` followed by a sum and a
    product with the targets, in fewer passes over the (chunk, C, C) step tensors, which are the whole
    cost: the sigmoid is taken in place and both sums are one batched product, laid out as
    (2, C) @ (C, C) (on CPU, 3x faster than (C, C) @ (C, 2)). With G[j, k] = a_j + b_j t_k the gradient
    of the sums, dL/ds_m = Σ_j G[j, m] H'[j, m] − Σ_k G[m, k] H'[m, k] (the diagonal terms cancel);
    H' = H (1 − H) is symmetric, so the backward is one product of [a, b, 1, t] with H' per chunk.
    H' overwrites H in place once the forward product has read it: the only tensor kept per chunk.
    """

    @staticmethod
    def forward(ctx, scaled: Tensor, targets: Tensor, chunk: int) -> Tensor:
        weights = torch.stack([torch.ones_like(targets), targets], dim=1)  # (Q, 2, C)
        slopes, sums = [], []
        for i in range(0, len(scaled), chunk):
            s = scaled[i : i + chunk]
            step = (s.unsqueeze(2) - s.unsqueeze(1)).sigmoid_()  # [q, k, j] = H(s_qk - s_qj)
            sums.append(torch.bmm(weights[i : i + chunk], step))
            slopes.append(step.addcmul_(step, step, value=-1.0))  # in place: H' = H (1 - H), symmetric
        ctx.chunk = chunk
        ctx.save_for_backward(weights, *slopes)
        return torch.cat(sums)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        weights, *slopes = ctx.saved_tensors
        pieces = []
        for i, slope in zip(range(0, len(grad), ctx.chunk), slopes):
            g, w = grad[i : i + ctx.chunk], weights[i : i + ctx.chunk]
            pieces.append(torch.bmm(torch.cat([g, w], dim=1), slope))  # (chunk, 4, C): [a, b, 1, t] H'
        sums = torch.cat(pieces)
        a, b, targets = grad[:, 0], grad[:, 1], weights[:, 1]
        return sums[:, 0] + targets * sums[:, 1] - a * sums[:, 2] - b * sums[:, 3], None, None


def continuous_average_precision(
    scores: Tensor, targets: Tensor, temperature: float = 0.01, chunk_size: int | None = None
) -> Tensor:
    """scores (Q, C) and targets (Q, C) in [0, 1] -> AP (Q,) with sigmoid-smoothed ranks; NaN for a
    query whose targets are all zero. Memory is chunk * C * C floats per chunk of queries, kept for the
    backward: at most `chunk_size` queries (None: all), on CPU fewer, so that a chunk stays in cache."""
    chunk = chunk_size or len(scores)
    if scores.device.type == "cpu":
        chunk = min(chunk, max(1, CPU_CHUNK_ELEMENTS // scores.shape[-1] ** 2))
    dtype = torch.promote_types(scores.dtype, torch.float32)  # float32 at least; float64 stays
    scaled, targets = scores.to(dtype) / temperature, targets.to(dtype)
    sums = _SoftRankSums.apply(scaled, targets, max(chunk, 1))
    # the diagonal holds sigmoid(0) = 1/2; an item ranks at or below itself, H(0) := 1: add the other 1/2
    rank = sums[:, 0] + 0.5  # (Q, C)
    precision = (sums[:, 1] + 0.5 * targets) / rank
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
    dimensions (batch) are flattened into queries; at most `chunk_size` queries are ranked at a time
    (see `continuous_average_precision`).
    """

    def __init__(self, temperature: float = 0.01, normalize: bool = False, chunk_size: int = 1024) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"the rank temperature must be positive, got {temperature}")
        self.temperature, self.normalize, self.chunk_size = temperature, normalize, chunk_size

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        scores = scores.reshape(-1, scores.shape[-1])
        targets = targets.detach().reshape(-1, targets.shape[-1]).float()
        ap = continuous_average_precision(scores, targets, self.temperature, self.chunk_size)
        if self.normalize:
            ap = ap / ideal_average_precision(targets)
        valid = ~torch.isnan(ap)
        if not valid.any():
            raise ValueError("continuous AP needs at least one query with a non-zero target")
        return 1.0 - ap[valid].mean()
