"""Pure loss modules: tensors in, scalar out, shapes in each docstring."""

from ssl_distill.losses.classification import HardDistillationLoss
from ssl_distill.losses.cluster_distillation import ClusterDistillationLoss
from ssl_distill.losses.feature_distillation import NormalizedL1Loss, WhitenedSmoothL1Loss
from ssl_distill.losses.reconstruction import MaskedReconstructionLoss
from ssl_distill.losses.relation_distillation import RelationDistillationLoss
from ssl_distill.losses.self_distillation import SelfDistillationLoss

__all__ = [
    "ClusterDistillationLoss",
    "HardDistillationLoss",
    "MaskedReconstructionLoss",
    "NormalizedL1Loss",
    "RelationDistillationLoss",
    "SelfDistillationLoss",
    "WhitenedSmoothL1Loss",
]
