"""CLUB: the contrastive log-ratio upper bound of mutual information (Cheng et al., ICML 2020, official
`mi_estimators.py::CLUBSample`), as MRDD uses it between a view-specific code s and the consistent code c
(Ke et al., CVPR 2024, official `src/models/mi_estimators.py`).

A variational q(c | s) = N(mu(s), exp(logvar(s))) (see `modules/club.py`) gives
- the estimator's training loss, mean_b Σ_d [(mu_b - c_b)^2 / exp(logvar_b) + logvar_b] (twice the
  negative log-likelihood of c under q, up to a constant): `club_learning_loss`;
- the bound Î = mean_b [log q(c_b | s_b) - log q(c_π(b) | s_b)] for a permutation π of the batch
  (CLUBSample's sampled negatives) = ½ mean_b Σ_d [(mu_b - c_π(b))^2 - (mu_b - c_b)^2] / exp(logvar_b):
  `club_upper_bound`. It is ~0 when s says nothing about c and large when it does.
"""

from __future__ import annotations

import torch
from torch import Tensor


def club_learning_loss(mu: Tensor, logvar: Tensor, target: Tensor) -> Tensor:
    """mu, logvar (B, D) of q(c | s), target c (B, D) -> scalar mean_b Σ_d [(mu - c)^2 / exp(logvar) + logvar]."""
    return ((mu - target).pow(2) / logvar.exp() + logvar).sum(dim=1).mean()


def club_upper_bound(mu: Tensor, logvar: Tensor, target: Tensor, permutation: Tensor | None = None) -> Tensor:
    """mu, logvar (B, D) of q(c | s), target c (B, D), permutation (B,) of the batch (random when None)
    -> scalar Î_CLUB (see the module docstring)."""
    if permutation is None:
        permutation = torch.randperm(len(target), device=target.device)
    positive = (mu - target).pow(2)
    negative = (mu - target[permutation]).pow(2)
    return (0.5 * (negative - positive) / logvar.exp()).sum(dim=1).mean()
