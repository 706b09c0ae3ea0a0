"""The variational network q(c | s) of a CLUB estimator (Cheng et al., ICML 2020, official
`CLUBSample`; MRDD `src/models/mi_estimators.py`); the bound and its training loss are in
`losses/club.py`."""

from __future__ import annotations

from torch import Tensor, nn


class ConditionalGaussian(nn.Module):
    """s (B, in_dim) -> mu (B, out_dim), logvar (B, out_dim) in (-1, 1): two MLPs in -> hidden / 2 -> out,
    ReLU between, Tanh after the log-variance (CLUBSample's `p_mu` and `p_logvar`)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 100) -> None:
        super().__init__()
        half = hidden_dim // 2
        self.mu = nn.Sequential(nn.Linear(in_dim, half), nn.ReLU(), nn.Linear(half, out_dim))
        self.logvar = nn.Sequential(nn.Linear(in_dim, half), nn.ReLU(), nn.Linear(half, out_dim), nn.Tanh())

    def forward(self, s: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(s), self.logvar(s)
