"""Multi-view VAE objective terms (MRDD, Ke et al., CVPR 2024; official `ConsistencyAE.get_loss`,
`ViewSpecificAE.get_reconstruction_loss`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

REDUCTIONS = ("per_sample", "released")


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """(B, D) mean and log-variance -> (B,) KL(N(mu, exp(logvar)) || N(0, I)), summed over D."""
    return 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=1)


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """A sample mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


class MultiViewVAELoss(nn.Module):
    """recon_weight * Σ_v SSE(recon_v, target_v) + kl_weight * KL(q(z | x) || N(0, I)).

    recons, targets: V tensors (B, C_v, H, W); mu, logvar (B, D). Returns (loss, reconstruction, kl),
    the last two the unweighted per-sample means.
    `per_sample` (default): both terms are means over the batch, so the weights mean the same at any
    batch size. `released`: the official reduction, SSE summed over the batch and KL averaged over it,
    which makes the effective KL weight 1/B of the per-sample one (mrdd.md, "subtle details" 3).
    """

    def __init__(self, recon_weight: float = 1.0, kl_weight: float = 1.0, reduction: str = "per_sample") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got '{reduction}'")
        self.recon_weight, self.kl_weight, self.reduction = recon_weight, kl_weight, reduction

    def forward(self, recons: Sequence[Tensor], targets: Sequence[Tensor], mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sse = sum((r.float() - t.float()).pow(2).flatten(1).sum(1) for r, t in zip(recons, targets, strict=True))
        kl = gaussian_kl(mu, logvar)
        recon_term = sse.sum() if self.reduction == "released" else sse.mean()
        loss = self.recon_weight * recon_term + self.kl_weight * kl.mean()
        return loss, sse.mean().detach(), kl.mean().detach()
