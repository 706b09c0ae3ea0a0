"""Projection heads (lightly's DINO head with its config section; G2SD's MLP heads)."""

from __future__ import annotations

from dataclasses import dataclass

from lightly.models.modules import DINOProjectionHead
from lightly.models.modules.heads import ProjectionHead
from timm.layers import Mlp
from torch import nn

from ssl_distill.schema import ranged


@dataclass
class DINOHeadConfig:
    """DINO's head: MLP in -> hidden -> hidden -> bottleneck, L2 norm, weight-normed linear to output_dim."""

    hidden_dim: int = ranged(2048, "[1, inf)")
    bottleneck_dim: int = ranged(256, "[1, inf)")
    output_dim: int = ranged(65536, "[1, inf)")
    batch_norm: bool = False
    norm_last_layer: bool = True


def dino_head(in_dim: int, cfg: DINOHeadConfig) -> DINOProjectionHead:
    return DINOProjectionHead(
        in_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim,
        batch_norm=cfg.batch_norm, norm_last_layer=cfg.norm_last_layer,
    )


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> Mlp:
    """fc -> GELU -> fc (timm's `Mlp`) with MAE's init, xavier-uniform weights and zero biases (G2SD's
    feature-prediction heads, `G2SD/models_mae.py`, built before MAE's `initialize_weights`)."""
    head = Mlp(in_dim, hidden_dim, out_dim)
    for layer in (head.fc1, head.fc2):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return head


def patch_projection(in_dim: int, hidden_dim: int, out_dim: int) -> ProjectionHead:
    """Per-token MLP in -> hidden -> hidden -> out with GELU, no norm (Leopart's projection head,
    Ziegler & Asano, CVPR 2022, `experiments/leopart/model.py`); works on (..., in_dim) tokens."""
    return ProjectionHead([
        (in_dim, hidden_dim, None, nn.GELU()),
        (hidden_dim, hidden_dim, None, nn.GELU()),
        (hidden_dim, out_dim, None, None),
    ])
