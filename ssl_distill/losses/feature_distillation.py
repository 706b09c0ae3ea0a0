"""Feature distillation distances between teacher and (adapted) student tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class NormalizedL1Loss(nn.Module):
    """DMAE feature loss (Bai et al. 2023; official `models_mae_distill.py::
    forward_distillation_loss_embedding`): mean |l2n(teacher) - l2n(student)| over all elements.

    teacher, student: (B, N, D) tokens (student already projected to D); each token is L2-normalised
    over channels in float32, the teacher is detached, and the mean runs over B * N * D elements.
    Bounded by 2 / sqrt(D).
    """

    def forward(self, teacher: Tensor, student: Tensor) -> Tensor:
        target = F.normalize(teacher.detach().float(), dim=-1)
        return (F.normalize(student.float(), dim=-1) - target).abs().mean()


class WhitenedSmoothL1Loss(nn.Module):
    """Smooth-L1 to per-token whitened teacher features: G2SD (Huang et al. 2023; official
    `G2SD/engine_distill.py::train_one_epoch`: `LayerNorm(C, eps=1e-6, elementwise_affine=False)` targets,
    `smooth_l1_loss(beta=2.0)`) and FD (Wei et al. 2022, `models/feature_distillation.py`, eps 1e-5).

    teacher, student: (B, N, C) tokens (student already projected to C). The teacher is detached and
    whitened by a parameter-free LayerNorm over channels; elementwise d^2 / (2 beta) for |d| < beta, else
    |d| - beta / 2; the mean runs over every element of the tokens selected by `tokens` (B, N) bool (all
    tokens when None), in float32.
    """

    def __init__(self, beta: float = 2.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.beta, self.eps = beta, eps

    def forward(self, teacher: Tensor, student: Tensor, tokens: Tensor | None = None) -> Tensor:
        target = F.layer_norm(teacher.detach().float(), teacher.shape[-1:], eps=self.eps)
        pred = student.float()
        if tokens is not None:
            target, pred = target[tokens], pred[tokens]
        return F.smooth_l1_loss(pred, target, beta=self.beta)
