"""DINO (Caron et al., ICCV 2021, "Emerging Properties in Self-Supervised Vision Transformers"), after the
official `main_dino.py`, with lightly's head. See docs/methods/dino.md.

The teacher is an EMA of the student (backbone + head) that sees the global crops; the student sees all
crops. The teacher's outputs are centred (on logits) and sharpened; its temperature warms up linearly and
the EMA momentum follows a cosine from `momentum_start` to `momentum_end` (1), both per step. The
teacher backbone is the one exported and evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.backbones import build_backbone
from ssl_distill.losses import SelfDistillationLoss
from ssl_distill.objectives.base import Output, SelfDistillationConfig, SelfDistillationObjective
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import ranged


@dataclass
class DINOConfig(SelfDistillationConfig):
    name: str = "dino"
    hidden_dim: int = ranged(512, "[1, inf)")
    bottleneck_dim: int = ranged(64, "[1, inf)")
    output_dim: int = ranged(1024, "[1, inf)")


@OBJECTIVES.register("dino")
class DINO(SelfDistillationObjective):
    """batch['views']: 2 global crops (B, C, H, W) then local crops (B, C, h, w)."""

    Config = DINOConfig
    default_transform = {"name": "multicrop"}
    model_kinds = frozenset({"vit", "cnn"})

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        vit = cfg.model.kind == "vit"  # a ViT takes the small local crops through dynamic sizes; a CNN takes any size
        self.student = build_backbone(cfg.model, **({"dynamic_img_size": True} if vit else {}))
        self.student_head = self.dino_head(self.student.embed_dim)
        self.teacher = self.ema.copy(self.student, running_stats=True)  # a CNN's BatchNorm statistics
        self.teacher_head = self.ema.copy(self.student_head)
        self.center = self.centering()
        self.criterion = SelfDistillationLoss(cfg.objective.student_temp, skip_same_view=True)

    @property
    def backbone(self) -> nn.Module:
        return self.teacher

    @staticmethod
    def _project(backbone: nn.Module, head: nn.Module, views: list[Tensor]) -> list[Tensor]:
        """Views of one resolution go through together: list of (B, C, H, W) -> list of (B, K)."""
        return list(head(backbone(torch.cat(views))).chunk(len(views)))

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        views = batch["views"]
        global_views, local_views = views[:2], views[2:]
        with torch.no_grad():
            teacher_out = torch.stack(self._project(self.teacher, self.teacher_head, global_views))
        student_out = self._project(self.student, self.student_head, global_views)
        if local_views:
            student_out += self._project(self.student, self.student_head, local_views)
        teacher_probs = self.center(teacher_out, self.teacher_temperature(step))
        loss = self.criterion(teacher_probs, torch.stack(student_out))
        return Output(loss, {"dino": loss.detach(), **self.schedule_logs(step)})
