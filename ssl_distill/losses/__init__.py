"""Pure loss modules: tensors in, scalar out, shapes in each docstring."""

from ssl_distill.losses.cluster_distillation import ClusterDistillationLoss
from ssl_distill.losses.cross_level import CrossLevelDistillationLoss
from ssl_distill.losses.feature_distillation import NormalizedL1Loss
from ssl_distill.losses.ranking import ContinuousAPLoss
from ssl_distill.losses.reconstruction import MaskedReconstructionLoss
from ssl_distill.losses.self_distillation import SelfDistillationLoss

__all__ = [
    "ClusterDistillationLoss",
    "ContinuousAPLoss",
    "CrossLevelDistillationLoss",
    "MaskedReconstructionLoss",
    "NormalizedL1Loss",
    "SelfDistillationLoss",
]
