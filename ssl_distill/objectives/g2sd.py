"""G2SD (Huang et al., CVPR 2023, "Generic-to-Specific Distillation of Masked Autoencoders"), after the
official code (github.com/pengzhiliang/G2SD, commit 6146adf: `G2SD/models_mae.py`, `engine_distill.py`,
`main_distill.py`, `models_vit.py`, `engine_finetune_dis.py`). `objective.stage` picks the stage; see
docs/methods/g2sd.md.

- `generic` (task-agnostic, no labels): one random mask shared by teacher and student. The frozen MAE
  teacher encodes the visible tokens and runs its own decoder only up to block `teacher_decoder_blocks` (no
  final norm); the target is that hidden state, whitened per token by a parameter-free LayerNorm. The
  student's light decoder (its pre-norm output) feeds an fc-GELU-fc head; smooth-L1 (beta 2) over every
  token (class, visible, masked). A second branch (the student's final-norm latent through its own head
  against the teacher's whitened pre-norm encoder output) is computed with weight 0, as released.
- `specific` (classification): fine-tuning with a distillation token appended last without position
  embedding; 0.5 cross-entropy on the (mixed) labels + 0.5 cross-entropy on the fine-tuned teacher's argmax
  (DeiT hard distillation); the two heads averaged at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ssl_distill.backbones import mask_from_keep
from ssl_distill.errors import ConfigError
from ssl_distill.losses import HardDistillationLoss, WhitenedSmoothL1Loss
from ssl_distill.modules.classifier import POOLS
from ssl_distill.modules.heads import mlp_head
from ssl_distill.modules.teacher import FrozenMAETeacher, FrozenPart, TeacherConfig, load_part
from ssl_distill.objectives.base import (
    ClassificationConfig,
    ClassificationObjective,
    MaskedModelingObjective,
    MaskingConfig,
    Objective,
    Output,
)
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import choice, ranged

STAGES = ("generic", "specific")


@dataclass
class G2SDGenericConfig(MaskingConfig):
    name: str = "g2sd"
    stage: str = choice("generic", STAGES)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # the MAE run (with its decoder)
    teacher_decoder_blocks: int | None = ranged(None, "[1, inf)")  # decoder blocks the teacher runs; None: half its depth (4 of 8)
    supervise_all: bool = True  # class + visible + masked tokens (official); false: masked tokens only
    beta: float = ranged(2.0, "(0, inf)")  # smooth-L1 threshold
    target_eps: float = ranged(1e-6, "(0, inf)")  # of the parameter-free LayerNorm on the targets
    decoder_weight: float = ranged(1.0, "[0, inf)")
    encoder_weight: float = ranged(0.0, "[0, inf)")  # the released weight of the encoder-feature branch


@dataclass
class G2SDSpecificConfig(ClassificationConfig):
    name: str = "g2sd"
    stage: str = choice("specific", STAGES)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # the fine-tuned teacher's run (finetune)
    pool: str = choice("cls", POOLS)  # G2SD's student reads its class token (global_pool off)
    distillation_weight: float = ranged(0.5, "[0, 1]")  # alpha: (1 - alpha) label CE + alpha teacher-argmax CE


class G2SDGeneric(MaskedModelingObjective):
    """batch['views'][0]: (B, C, H, W) -> smooth-L1 between the student's decoder head and the teacher's
    whitened partial-decoder state (+ 0 x the encoder branch)."""

    Config = G2SDGenericConfig
    reconstructs = False

    def build_teachers(self) -> None:
        o = self.cfg.objective
        self.teacher = FrozenMAETeacher.from_run(o.teacher, o.teacher_decoder_blocks)
        if self.teacher.backbone.grid_size != self.backbone.grid_size:
            raise ConfigError(
                f"teacher patch grid {self.teacher.backbone.grid_size} differs from the student's "
                f"{self.backbone.grid_size}: G2SD compares tokens at the same positions"
            )
        teacher_encoder, teacher_decoder = self.teacher.backbone.embed_dim, self.teacher.decoder.embed.out_features
        self.decoder_head = mlp_head(o.decoder.dim, teacher_decoder, teacher_decoder)
        self.encoder_head = mlp_head(self.backbone.embed_dim, teacher_encoder, teacher_encoder)
        self.distance = WhitenedSmoothL1Loss(o.beta, o.target_eps)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        o = self.cfg.objective
        images = self.inputs(batch)
        idx_keep = self.sample_mask(images)  # the one mask (the official shared noise) of teacher and student
        targets = self.teacher(images, idx_keep)
        latent = self.backbone.encode(images, idx_keep).tokens  # final-norm, class + visible
        hidden = self.decoder.hidden(latent, idx_keep)  # (B, 1 + L, dim), pre-norm
        tokens = None if o.supervise_all else self.masked_tokens(idx_keep)
        decoder_loss = self.distance(targets.decoder, self.decoder_head(hidden), tokens)
        encoder_loss = self.distance(targets.encoder, self.encoder_head(latent))
        loss = o.decoder_weight * decoder_loss + o.encoder_weight * encoder_loss
        return Output(loss, {"decoder_feature": decoder_loss.detach(), "encoder_feature": encoder_loss.detach()})

    def masked_tokens(self, idx_keep: Tensor) -> Tensor:
        """(B, 1 + L) bool: the hidden patches (official `supervise_all=False`: `[:, 1:][mask]`)."""
        mask = mask_from_keep(idx_keep, self.backbone.num_patches).bool()
        return torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1)


class G2SDSpecific(ClassificationObjective):
    """batch['views'][0], batch['label'] -> (1 - alpha) label CE (class head) + alpha CE on the teacher's
    argmax (distillation head)."""

    Config = G2SDSpecificConfig
    distillation_token = True

    def build_teachers(self) -> None:
        o = self.cfg.objective
        self.teacher = FrozenPart(load_part(o.teacher.source, "classifier"))
        teacher = self.teacher.module
        if teacher.head.out_features != o.num_classes:
            raise ConfigError(
                f"objective.teacher {o.teacher.source}: its head has {teacher.head.out_features} classes, "
                f"objective.num_classes is {o.num_classes}"
            )
        if teacher.backbone.spec["img_size"] != self.backbone.spec["img_size"]:
            raise ConfigError(
                f"objective.teacher {o.teacher.source}: it reads {teacher.backbone.spec['img_size']} px images, "
                f"the student {self.backbone.spec['img_size']} px"
            )

        self.distillation = HardDistillationLoss(self.criterion, o.distillation_weight)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        images, targets = self.mixed(batch)
        class_logits, dist_logits = self.classifier(images)
        teacher_logits = self.teacher(images)  # the mixed images, as released
        label, hard = self.distillation.terms(class_logits, dist_logits, targets, teacher_logits)
        loss = self.distillation.weigh(label, hard)
        return Output(loss, {"classification": label.detach(), "distillation": hard.detach()})


@OBJECTIVES.register("g2sd")
class G2SD:
    """G2SD's two stages under one name: `objective.stage` = generic | specific."""

    stages: dict[str, type[Objective]] = {"generic": G2SDGeneric, "specific": G2SDSpecific}

    @classmethod
    def variant(cls, section: Any) -> type[Objective]:
        stage = section.get("stage", "generic")
        if stage not in cls.stages:
            raise ConfigError(f"objective.stage must be one of {STAGES}, got '{stage}'")
        return cls.stages[stage]
