"""Classification losses with a teacher."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class HardDistillationLoss(nn.Module):
    """DeiT's hard-label distillation (Touvron et al. 2021, §5.2 "hard-label distillation"), as G2SD's
    specific stage uses it (official `G2SD/engine_finetune_dis.py::train_one_epoch`):

    L = (1 − alpha) · base(class_logits, targets) + alpha · CE(dist_logits, argmax teacher_logits)

    class_logits, dist_logits, teacher_logits: (B, K); targets: what `base` takes ((B,) labels, or (B, K)
    mixup/cutmix soft targets). The teacher sees the same (mixed) images as the student; its argmax is a
    hard label, so no gradient reaches it. alpha 0.5 in G2SD and DeiT.
    """

    def __init__(self, base: nn.Module, alpha: float = 0.5) -> None:
        super().__init__()
        self.base, self.alpha = base, alpha

    def terms(self, class_logits: Tensor, dist_logits: Tensor, targets: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """The label term base(class_logits, targets) and the teacher term CE(dist_logits, argmax teacher)."""
        hard = F.cross_entropy(dist_logits.float(), teacher_logits.detach().argmax(dim=-1))
        return self.base(class_logits, targets), hard

    def weigh(self, label: Tensor, hard: Tensor) -> Tensor:
        return (1 - self.alpha) * label + self.alpha * hard

    def forward(self, class_logits: Tensor, dist_logits: Tensor, targets: Tensor, teacher_logits: Tensor) -> Tensor:
        return self.weigh(*self.terms(class_logits, dist_logits, targets, teacher_logits))
