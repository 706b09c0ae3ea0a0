"""MAE pixel reconstruction loss (He et al. 2022, §3 "Reconstruction target"; official
`models_mae.py::forward_loss`, also DMAE's `models_mae_distill.py::forward_loss`)."""

from __future__ import annotations

from torch import Tensor, nn


class MaskedReconstructionLoss(nn.Module):
    """Per-patch mean squared error, averaged over hidden patches only.

    pred, target: (B, L, P) patch values (P = p * p * C, MAE's channel-last order inside a patch);
    mask: (B, L), 1 for a hidden patch, 0 for a visible one. With `norm_pix` each target patch is
    standardised by its own mean and unbiased variance (MAE's recommended target; DMAE keeps raw pixels).
    """

    def __init__(self, norm_pix: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix, self.eps = norm_pix, eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps) ** 0.5
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()
