"""Self-distillation cross-entropy between teacher and student views (DINO, Caron et al. 2021, eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfDistillationLoss(nn.Module):
    """Mean over view pairs and samples of -Σ_k p_t log softmax(s / τ_s)_k.

    teacher_probs (Vt, B, K): centred and sharpened teacher distributions (see `TeacherCentering`);
    student_logits (Vs, B, K): raw student head outputs. Every teacher view is paired with every student
    view, except, with `skip_same_view`, student view v with teacher view v (DINO's multi-crop loss: the
    teacher views are the first Vt student views; lightly's `DINOLoss`). With one teacher view and V masked
    student views (DISCOVR) every pair counts. The teacher carries no gradient.
    """

    def __init__(self, student_temp: float = 0.1, skip_same_view: bool = True) -> None:
        super().__init__()
        self.student_temp, self.skip_same_view = student_temp, skip_same_view

    def forward(self, teacher_probs: Tensor, student_logits: Tensor) -> Tensor:
        dtype = torch.promote_types(student_logits.dtype, torch.float32)  # float32 at least, float64 kept
        log_students = F.log_softmax(student_logits.to(dtype) / self.student_temp, dim=-1)
        pairs = -torch.einsum("tbk,sbk->ts", teacher_probs.detach().to(dtype), log_students)  # (Vt, Vs), summed over B
        if self.skip_same_view:
            pairs = pairs.fill_diagonal_(0)
            count = pairs.numel() - min(pairs.shape)
        else:
            count = pairs.numel()
        if count == 0:
            raise ValueError("self-distillation needs at least one teacher/student view pair")
        return pairs.sum() / (count * teacher_probs.shape[1])
