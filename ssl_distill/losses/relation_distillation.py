"""Token-relation distillation: the student's attention distributions follow the teacher's (Hybrid
Distillation, Shi et al., ICLR 2024, as reconstructed from the paper's description; the KL convention of
G2SD's `G2SD/engine_distill.py::cal_relation_loss` and MiniLM-v2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

RELATION_DISTANCES = ("kl", "smooth_l1", "mse")


class RelationDistillationLoss(nn.Module):
    """teacher, student: (B, A, N, N) attention logits (q kᵀ / √d; rows are queries, columns keys), over the
    same N tokens in the same order on both sides. Rows become distributions by softmax in float32.

    `kl`: KL(teacher ‖ student) = Σ_keys t (log t − log s), averaged over the B·A·N rows (summing over keys
    first: `reduction='mean'` would also divide by N). `smooth_l1` (beta 1) and `mse` compare the
    probabilities, averaged over all elements. The teacher is detached.
    """

    def __init__(self, distance: str = "kl") -> None:
        super().__init__()
        if distance not in RELATION_DISTANCES:
            raise ValueError(f"relation distance must be one of {RELATION_DISTANCES}, got '{distance}'")
        self.distance = distance

    def forward(self, teacher: Tensor, student: Tensor) -> Tensor:
        log_t = F.log_softmax(teacher.detach().float(), dim=-1)
        log_s = F.log_softmax(student.float(), dim=-1)
        if self.distance == "kl":
            return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=-1).mean()
        loss = F.smooth_l1_loss if self.distance == "smooth_l1" else F.mse_loss
        return loss(log_s.exp(), log_t.exp())
