"""iBOT masked-patch self-distillation (Zhou et al., ICLR 2022; DINOv2 `loss/ibot_patch_loss.py`) as
TIPS's masked image modelling term (Maninis et al., ICLR 2025): the student's patch tokens at masked
positions of a masked image predict the teacher's centred, sharpened patch distributions on the unmasked
image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedPatchDistillationLoss(nn.Module):
    """Mean over images with at least one masked patch of the mean over that image's masked patches of
    -Σ_k p_t log softmax(s / τ_s)_k.

    teacher_probs (M, K) and student_logits (M, K): the M masked patches of the batch, in the row-major
    order of `mask[mask]`; mask (B, L) bool, True on masked patches. Images without masked patches are
    left out of the mean (DINOv2 divides by all images instead; tips.md "subtle details" 4). Visible
    patches never enter (TIPS v1). The teacher carries no gradient.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, teacher_probs: Tensor, student_logits: Tensor, mask: Tensor) -> Tensor:
        mask = mask.bool()
        if teacher_probs.shape != student_logits.shape or len(teacher_probs) != int(mask.sum()):
            raise ValueError(
                f"teacher {tuple(teacher_probs.shape)} and student {tuple(student_logits.shape)} must both hold "
                f"the {int(mask.sum())} masked patches"
            )
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        log_students = F.log_softmax(student_logits.to(dtype) / self.student_temp, dim=-1)
        per_token = -(teacher_probs.detach().to(dtype) * log_students).sum(-1)
        counts = mask.sum(dim=1)  # (B,)
        image = torch.arange(len(mask), device=mask.device)[:, None].expand_as(mask)[mask]  # (M,) image of each patch
        per_image = torch.zeros(len(mask), dtype=per_token.dtype, device=per_token.device).index_add_(0, image, per_token)
        masked_images = counts > 0
        if not masked_images.any():
            return per_token.sum() * 0.0
        return (per_image[masked_images] / counts[masked_images]).mean()
