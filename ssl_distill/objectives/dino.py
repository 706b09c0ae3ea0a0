"""DINO (Caron et al., ICCV 2021) with lightly's head, loss and momentum update.

The teacher is an EMA of the student (backbone + head) that sees the global crops; the student sees
all crops. Teacher temperature warms up linearly, EMA momentum follows a cosine from
`momentum_start` to 1, both per iteration. The teacher backbone is the one exported and evaluated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.modules.schedules import linear_warmup
from ssl_distill.objectives.base import Objective, Output, build_vit
from ssl_distill.registry import OBJECTIVES


@dataclass
class DINOConfig:
    name: str = "dino"
    hidden_dim: int = 512
    bottleneck_dim: int = 64
    output_dim: int = 1024
    batch_norm: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.3  # of all steps
    center_momentum: float = 0.9
    momentum_start: float = 0.996


@OBJECTIVES.register("dino")
class DINO(Objective):
    """batch['views']: 2 global crops (B, C, H, W) then local crops (B, C, h, w)."""

    Config = DINOConfig
    default_transform = {"name": "multicrop"}

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.student = build_vit(cfg.model, dynamic_img_size=True)
        self.student_head = self._head()
        self.teacher = copy.deepcopy(self.student)
        self.teacher_head = self._head()  # weight-normed heads cannot be deep-copied; copy the weights
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=o.output_dim, student_temp=o.student_temp, center_momentum=o.center_momentum,
            teacher_temp=o.teacher_temp, warmup_teacher_temp=o.warmup_teacher_temp,
        )
        self.temp_warmup_steps = int(o.warmup_teacher_temp_fraction * max_steps)

    def _head(self) -> DINOProjectionHead:
        o = self.cfg.objective
        return DINOProjectionHead(
            self.student.embed_dim, o.hidden_dim, o.bottleneck_dim, o.output_dim,
            batch_norm=o.batch_norm, norm_last_layer=o.norm_last_layer,
        )

    @property
    def backbone(self) -> nn.Module:
        return self.teacher

    def teacher_temperature(self, step: int) -> float:
        o = self.cfg.objective
        return linear_warmup(step, self.temp_warmup_steps, o.warmup_teacher_temp, o.teacher_temp)

    def momentum(self, step: int) -> float:
        return cosine_schedule(step, self.max_steps, self.cfg.objective.momentum_start, 1.0)

    def _project(self, backbone: nn.Module, head: nn.Module, views: list[Tensor]) -> list[Tensor]:
        """Views of one resolution go through together: list of (B, C, H, W) -> list of (B, K)."""
        return list(head(backbone(torch.cat(views))).chunk(len(views)))

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        views = batch["views"]
        global_views, local_views = views[:2], views[2:]
        with torch.no_grad():
            teacher_out = self._project(self.teacher, self.teacher_head, global_views)
        student_out = self._project(self.student, self.student_head, global_views)
        if local_views:
            student_out += self._project(self.student, self.student_head, local_views)
        temperature = self.teacher_temperature(step)
        loss = self.criterion(teacher_out, student_out, teacher_temp=temperature)
        return Output(loss, {"dino": loss.detach(), "teacher_temp": temperature, "momentum": self.momentum(step)})

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        momentum = self.momentum(step)
        update_momentum(self.student, self.teacher, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)
