"""Centring and sharpening of teacher outputs (DINO, Caron et al. 2021, §3.1 "Avoiding collapse")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules.center import Center
from torch import Tensor, nn

CENTER_ON = ("logits", "probabilities")


class TeacherCentering(nn.Module):
    """p = softmax((t - c) / τ) over the last dimension of teacher logits t (..., K).

    The centre c (1, K) moves only in `update()` (called once per optimizer step, after it), towards the
    mean over all leading dimensions of what the last `forward` saw: the logits (DINO, `center_on=
    'logits'`) or the sharpened probabilities (DISCOVR's released code, `'probabilities'`). lightly's
    `Center` keeps the momentum average and all-reduces the batch mean under torch.distributed.
    """

    def __init__(self, dim: int, momentum: float = 0.9, center_on: str = "logits") -> None:
        super().__init__()
        if center_on not in CENTER_ON:
            raise ValueError(f"center_on must be one of {CENTER_ON}, got '{center_on}'")
        self.center = Center((1, dim), momentum=momentum)
        self.center_on = center_on
        self._pending: Tensor | None = None

    def forward(self, teacher_logits: Tensor, temperature: float) -> Tensor:
        logits = teacher_logits.detach().float()
        probabilities = F.softmax((logits - self.center.value) / temperature, dim=-1)
        pending = probabilities if self.center_on == "probabilities" else logits
        self._pending = pending.reshape(-1, pending.shape[-1])
        return probabilities

    @torch.no_grad()
    def update(self) -> None:
        """Move the centre towards the last forward's batch mean (a no-op when nothing is pending)."""
        if self._pending is not None:
            self.center.update(self._pending)
            self._pending = None
