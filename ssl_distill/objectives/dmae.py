"""DMAE (Bai et al., CVPR 2023, "Masked Autoencoders Enable Efficient Knowledge Distillers"), after
the official `models_mae_distill.py` / `engine_distill.py` (spec: shared/research/dmae.md).

One random mask per step is shared by teacher and student. The frozen MAE teacher encodes only the
visible tokens and stops after its deepest tapped block. Each student tap (pre-norm, class token
included) goes through its own Linear adapter (PyTorch default init) and is compared with the
teacher tap by L1 between L2-normalised tokens; the student also reconstructs raw pixels (MSE on
hidden patches, no per-patch normalisation by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightly.models import utils
from omegaconf import DictConfig
from torch import nn

from ssl_distill.backbones import mask_from_keep
from ssl_distill.losses import MaskedReconstructionLoss, NormalizedL1Loss
from ssl_distill.modules.decoder import PixelDecoder
from ssl_distill.modules.teacher import FrozenTeacher, TeacherConfig, load_teacher_backbone
from ssl_distill.objectives.base import Objective, Output, build_vit
from ssl_distill.registry import OBJECTIVES


@dataclass
class DMAEConfig:
    name: str = "dmae"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    student_blocks: list[int] | None = None  # 0-based; None = the block at 3/4 depth (8 of 12)
    teacher_blocks: list[int] | None = None  # 0-based; None = the block at 3/4 depth (17 of 24)
    reconstruction_weight: float = 1.0
    distillation_weight: float = 1.0
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4


def three_quarter_block(depth: int) -> int:
    return depth * 3 // 4 - 1


@OBJECTIVES.register("dmae")
class DMAE(Objective):
    """batch['views'][0]: (B, C, H, W) -> reconstruction + feature distillation."""

    Config = DMAEConfig

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.backbone = build_vit(cfg.model)
        self.student_blocks = list(o.student_blocks or [three_quarter_block(self.backbone.depth)])
        teacher = load_teacher_backbone(o.teacher)
        self.teacher_blocks = list(o.teacher_blocks or [three_quarter_block(teacher.depth)])
        if len(self.teacher_blocks) != len(self.student_blocks):
            raise ValueError(
                f"objective.student_blocks {self.student_blocks} and objective.teacher_blocks "
                f"{self.teacher_blocks} must pair up one to one"
            )
        if teacher.grid_size != self.backbone.grid_size:
            raise ValueError(
                f"teacher patch grid {teacher.grid_size} differs from the student's "
                f"{self.backbone.grid_size}: DMAE compares tokens at the same positions"
            )
        self.teacher = FrozenTeacher(teacher, self.teacher_blocks)
        self.adapters = nn.ModuleList(
            nn.Linear(self.backbone.embed_dim, teacher.embed_dim) for _ in self.student_blocks
        )
        self.decoder = PixelDecoder(
            self.backbone.grid_size, self.backbone.embed_dim, self.backbone.patch_size**2 * 3,
            o.decoder_dim, o.decoder_depth, o.decoder_heads,
        )
        self.reconstruction = MaskedReconstructionLoss(norm_pix=o.norm_pix_loss)
        self.distance = NormalizedL1Loss()
        self.mask_ratio = o.mask_ratio
        self.weights = (o.reconstruction_weight, o.distillation_weight)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        images = batch["views"][0]
        idx_keep, _ = utils.random_token_mask((images.shape[0], self.backbone.num_patches + 1), self.mask_ratio, device=images.device)
        targets = self.teacher(images, idx_keep)
        encoded = self.backbone.encode(images, idx_keep, taps=self.student_blocks)
        pred = self.decoder(encoded.tokens, idx_keep)
        mask = mask_from_keep(idx_keep, self.backbone.num_patches)
        reconstruction = self.reconstruction(pred, utils.patchify(images, self.backbone.patch_size), mask)
        distillation = sum(
            self.distance(targets[t], adapter(encoded.taps[s]))
            for s, t, adapter in zip(self.student_blocks, self.teacher_blocks, self.adapters)
        )
        loss = self.weights[0] * reconstruction + self.weights[1] * distillation
        return Output(loss, {"reconstruction": reconstruction.detach(), "distillation": distillation.detach()})
