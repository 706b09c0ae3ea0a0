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
