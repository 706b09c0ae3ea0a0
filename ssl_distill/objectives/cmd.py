"""CMD: Cross-level Multi-instance Distillation (Bi, Ji, Yi, Zhan, Xia, "Cross-level Multi-instance
Distillation for Self-supervised Fine-grained Visual Categorization", IEEE TIP 2025, arXiv 2401.08860),
after the official github.com/BiQiWHU/CMD (an EsViT fork): `main_esvit.py` (`DDINOLoss` with the block
`### ours md ###`, `train_esvit`), `models/swin_transformer.py` (`forward` with `use_dense_prediction`).
See docs/methods/cmd.md.

DINO-family self-distillation at two levels: a view head on the view token and a separate region head
on every patch token, each with its own EMA teacher head and its own centre. The loss
(`losses/cross_level.py`) is 0.5 image <-> image + 0.5 region <-> region (each student patch against its
most similar teacher patch by backbone-feature cosine) per (teacher global view, other student view)
pair, plus the multi-instance term comparing the bag of a crop's patch predictions with its image
prediction. `md_mode` picks the explicit formula: `normalized` (default, a true KL that is finite and
bounded below on every PyTorch) or `official_legacy` (the value the released code computed on torch 1.9,
which can be negative). The view token is the average of the patch tokens (`view_token: mean`, what the
Swin of the paper gives) or a ViT's class token (`cls`). Works with `model.kind` vit and swin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.backbones import build_backbone, load_backbone_into
from ssl_distill.errors import ConfigError
from ssl_distill.losses import CrossLevelDistillationLoss
from ssl_distill.losses.cross_level import MD_MODES
from ssl_distill.objectives.base import Output, SelfDistillationConfig, SelfDistillationObjective
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import choice, ranged

VIEW_TOKENS = ("mean", "cls")


@dataclass
class CMDConfig(SelfDistillationConfig):
    """Official defaults (train_nfg.bat + EsViT argparse) unless noted; heads as DINOHeadConfig (2048 /
    256 / 65536, student `norm_last_layer` false on the command line)."""

    name: str = "cmd"
    init: str | None = None  # backbone to continue from (official: an ImageNet EsViT checkpoint); None: scratch
    norm_last_layer: bool = False
    teacher_temp: float = ranged(0.07, "(0, inf)")
    warmup_teacher_temp: float = ranged(0.04, "(0, inf)")
    warmup_teacher_temp_fraction: float = ranged(0.1, "[0, 1]")  # 30 of 300 epochs
    view_token: str = choice("mean", VIEW_TOKENS)  # mean (avg-pooled tokens, Swin/EsViT) | cls (a ViT's class token)
    view_weight: float = ranged(0.5, "[0, inf)")
    region_weight: float = ranged(0.5, "[0, inf)")
    md_weight: float = ranged(1.0, "[0, inf)")
    md_mode: str = choice("normalized", MD_MODES)  # normalized | official_legacy (see losses/cross_level.py)


@dataclass
class Projected:
    """One resolution group of views: view logits (V, B, K), region logits (V, B, N, K), patch tokens
    (V, B, N, D) (backbone features, used for matching)."""

    view: Tensor
    region: Tensor
    tokens: Tensor


@OBJECTIVES.register("cmd")
class CMD(SelfDistillationObjective):
    """batch['views']: 2 global crops (B, C, H, W) then local crops (B, C, h, w) (multi-crop)."""

    Config = CMDConfig
    default_transform = {"name": "multicrop"}
    model_kinds = frozenset({"vit", "swin"})

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.student = build_backbone(cfg.model, dynamic_img_size=True)
        if o.init is not None:
            load_backbone_into(self.student, o.init)  # before the teacher copies it
        if o.view_token == "cls" and self.student.num_prefix_tokens == 0:
            raise ConfigError(f"objective.view_token=cls needs a class token; model.kind '{cfg.model.kind}' has none: use mean")
        self.student_head = self.dino_head(self.student.embed_dim)
        self.student_region_head = self.dino_head(self.student.embed_dim)
        self.teacher = self.ema.copy(self.student)
        self.teacher_head = self.ema.copy(self.student_head)
        self.teacher_region_head = self.ema.copy(self.student_region_head)
        self.center, self.region_center = self.centering(), self.centering()
        self.criterion = CrossLevelDistillationLoss(o.student_temp, o.view_weight, o.region_weight, o.md_weight, o.md_mode)

    @property
    def backbone(self) -> nn.Module:
        return self.teacher

    def _project(self, backbone: nn.Module, head: nn.Module, region_head: nn.Module, views: list[Tensor]) -> Projected:
        """Views of one resolution go through together."""
        pooled, tokens = backbone.features(torch.cat(views))
        view_token = tokens.mean(1) if self.cfg.objective.view_token == "mean" else pooled
        views_batch = (len(views), -1)  # (V * B, ...) -> (V, B, ...)
        region = region_head(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])  # rows: a BN head sees B * N
        return Projected(head(view_token).unflatten(0, views_batch), region.unflatten(0, views_batch), tokens.unflatten(0, views_batch))

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        views = batch["views"]
        global_views, local_views = views[:2], views[2:]
        with torch.no_grad():
            teacher = self._project(self.teacher, self.teacher_head, self.teacher_region_head, global_views)
        groups = [self._project(self.student, self.student_head, self.student_region_head, global_views)]
        if local_views:
            groups.append(self._project(self.student, self.student_head, self.student_region_head, local_views))
        temperature = self.teacher_temperature(step)
        terms = self.criterion(
            self.center(teacher.view, temperature),
            self.region_center(teacher.region, temperature),
            teacher.tokens,
            [view for group in groups for view in group.view],
            [region for group in groups for region in group.region],
            [tokens for group in groups for tokens in group.tokens],
        )
        logs = {"view": terms.view.detach(), "region": terms.region.detach(), "md": terms.md.detach()}
        return Output(terms.loss, {**logs, "md_teacher": terms.md_teacher, **self.schedule_logs(step)})
