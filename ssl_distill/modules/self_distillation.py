"""DINO self-distillation of masked student views against one teacher view, with a centred teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules.center import Center
from torch import Tensor, nn


class CenteredDistillation(nn.Module):
    """Cross-entropy between the centred, sharpened teacher distribution of one (full) view and the
    student distributions of V masked views, averaged over views and samples (DISCOVR, official
    `engine_for_pretraining.py` video and image DINO terms; DINO's loss without multi-crop pairing).

    teacher: (B, K) logits of the teacher head; students: (V, B, K) logits of the student head.
    The centre (1, K) moves only in `update_center`, from the last forward's teacher batch: DINO
    centres logits; `center_probabilities=True` centres with the post-softmax teacher
    probabilities, as the official DISCOVR code does. Under torch.distributed the batch mean is
    all-reduced (lightly's Center).
    """

    def __init__(
        self,
        output_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_probabilities: bool = False,
    ) -> None:
        super().__init__()
        self.center = Center((1, output_dim), momentum=center_momentum)
        self.student_temp, self.center_probabilities = student_temp, center_probabilities
        self._batch: Tensor | None = None

    def forward(self, teacher: Tensor, students: Tensor, teacher_temp: float) -> Tensor:
        probabilities = F.softmax((teacher.detach().float() - self.center.value) / teacher_temp, dim=-1)
        log_students = F.log_softmax(students.float() / self.student_temp, dim=-1)
        self._batch = probabilities if self.center_probabilities else teacher.detach().float()
        return -(probabilities * log_students).sum(dim=-1).mean()

    @torch.no_grad()
    def update_center(self) -> None:
        """Move the centre towards the last forward's teacher batch mean (call after the optimizer step)."""
        if self._batch is not None:
            self.center.update(self._batch)
            self._batch = None
