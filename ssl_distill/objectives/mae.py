"""MAE (He et al., CVPR 2022, "Masked Autoencoders Are Scalable Vision Learners"): reconstruct the hidden
patches from the 25% visible ones, after the official `models_mae.py`. It also trains the teachers that
DMAE, G2SD and Hybrid Distillation distill from. See docs/methods/mae.md."""

from __future__ import annotations

from dataclasses import dataclass

from ssl_distill.objectives.base import MaskedModelingConfig, MaskedModelingObjective
from ssl_distill.registry import OBJECTIVES


@dataclass
class MAEConfig(MaskedModelingConfig):
    name: str = "mae"


@OBJECTIVES.register("mae")
class MAE(MaskedModelingObjective):
    """batch['views'][0]: (B, C, H, W) -> mean squared error on the hidden patches."""

    Config = MAEConfig
