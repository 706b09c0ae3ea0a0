"""Pure loss modules: tensors in, scalar out, shapes in each docstring."""

from ssl_distill.losses.classification import HardDistillationLoss
from ssl_distill.losses.club import club_learning_loss, club_upper_bound
from ssl_distill.losses.cluster_distillation import ClusterDistillationLoss
from ssl_distill.losses.contrastive import ImageTextContrastiveLoss
from ssl_distill.losses.cross_level import CrossLevelDistillationLoss
from ssl_distill.losses.feature_distillation import NormalizedL1Loss, WhitenedSmoothL1Loss
from ssl_distill.losses.masked_patch_distillation import MaskedPatchDistillationLoss
from ssl_distill.losses.ranking import ContinuousAPLoss
from ssl_distill.losses.reconstruction import MaskedReconstructionLoss
from ssl_distill.losses.relation_distillation import RelationDistillationLoss
from ssl_distill.losses.self_distillation import SelfDistillationLoss
from ssl_distill.losses.vae import MultiViewVAELoss, gaussian_kl, reparameterize

__all__ = [
    "ClusterDistillationLoss",
    "ContinuousAPLoss",
    "CrossLevelDistillationLoss",
    "HardDistillationLoss",
    "ImageTextContrastiveLoss",
    "MaskedPatchDistillationLoss",
    "MaskedReconstructionLoss",
    "MultiViewVAELoss",
    "NormalizedL1Loss",
    "RelationDistillationLoss",
    "SelfDistillationLoss",
    "WhitenedSmoothL1Loss",
    "club_learning_loss",
    "club_upper_bound",
    "gaussian_kl",
    "reparameterize",
]
