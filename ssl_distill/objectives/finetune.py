"""Supervised fine-tuning (He et al., CVPR 2022, MAE §A.2 "End-to-end fine-tuning"; official
`main_finetune.py`, `engine_finetune.py`, `util/lr_decay.py`): a pretrained encoder with a linear head,
trained on labels with layer-wise lr decay, label smoothing and mixup/cutmix (timm). It trains the teachers
of G2SD's specific stage and, from scratch, the supervised teachers of Hybrid Distillation; validation top-1
goes into the run's metrics.csv. See docs/methods/finetune.md."""

from __future__ import annotations

from dataclasses import dataclass

from ssl_distill.objectives.base import ClassificationConfig, ClassificationObjective
from ssl_distill.registry import OBJECTIVES


@dataclass
class FineTuneConfig(ClassificationConfig):
    name: str = "finetune"


@OBJECTIVES.register("finetune")
class FineTune(ClassificationObjective):
    """batch['views'][0]: (B, C, H, W), batch['label']: (B,) -> (soft-target) cross-entropy."""

    Config = FineTuneConfig
