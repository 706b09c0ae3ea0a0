"""Semantic cluster distillation (DISCOVR, Mishra et al., NeurIPS 2025; official
`engine_for_pretraining.py` SwAV terms and `utils/utils.py::sinkhorn`): hard Sinkhorn cluster
assignments of teacher tokens are the targets of the student tokens' prototype scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss.swav_loss import sinkhorn
from torch import Tensor, nn


def standardize_tokens(tokens: Tensor, eps: float = 1e-6) -> Tensor:
    """(..., N, D) -> the same, each channel standardised over the N tokens (unbiased std, eps
    added after the square root): DISCOVR's per-frame standardisation of image-teacher patches."""
    return (tokens - tokens.mean(dim=-2, keepdim=True)) / (tokens.std(dim=-2, keepdim=True) + eps)


@torch.no_grad()
def sinkhorn_assignments(scores: Tensor, epsilon: float = 0.05, iterations: int = 10) -> Tensor:
    """(M, K) cosine scores -> (M, K) soft assignments, rows summing to 1, with equal total mass
    per prototype over all M tokens (SwAV's Sinkhorn-Knopp, lightly's implementation, no log
    domain). Runs in float32 outside autocast (exp(1 / 0.05) overflows fp16). Under
    torch.distributed the sums run over the tokens of every rank, which must hold equally many."""
    with torch.autocast(scores.device.type, enabled=False):
        return sinkhorn(scores.detach().float(), iterations=iterations, epsilon=epsilon, gather_distributed=True)


class ClusterDistillationLoss(nn.Module):
    """CE(student_scores / temperature, argmax sinkhorn(target_scores)), averaged over tokens.

    student_scores, target_scores: (..., K) cosine scores of student and teacher tokens against the
    same unit-norm prototypes; all leading dimensions are flattened and assigned jointly. The
    targets carry no gradient: only the student (and the prototypes through its scores) learns.
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 10) -> None:
        super().__init__()
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations

    def forward(self, student_scores: Tensor, target_scores: Tensor) -> Tensor:
        num_prototypes = target_scores.shape[-1]
        assignments = sinkhorn_assignments(target_scores.reshape(-1, num_prototypes), self.epsilon, self.iterations)
        labels = assignments.argmax(dim=-1)
        return F.cross_entropy(student_scores.reshape(-1, num_prototypes).float() / self.temperature, labels)
