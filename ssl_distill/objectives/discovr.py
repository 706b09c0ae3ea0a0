"""DISCOVR (Mishra et al., NeurIPS 2025, "Self-supervised Learning of Echocardiographic Video
Representations via Online Cluster Distillation"), after the official `models/modeling_pretrain.py` and
`engine/engine_for_pretraining.py`. See docs/methods/discovr.md for the defaults and every switch.

Three terms, each weighted:
- video DINO: V tube-masked views of the clip (student) against the full clip (EMA video teacher);
- image DINO: every frame, V token-masked views (image student) against the full frame (EMA image
  teacher);
- semantic cluster distillation: the image teacher's patch tokens, standardised per frame, are
  assigned to prototypes by Sinkhorn; the decoder output of a tube-masked clip predicts those hard
  assignments. Only the video student, the decoder and the prototypes learn from it.

As in the released code: the video ViT uses VideoMAE's 1-D sinusoid positions (`model.pos_embed:
sincos_1d` unless the config says otherwise); the image encoders are video ViTs over one frame (tubelet
1) built with the encoder class's defaults (no qkv bias, LayerNorm eps 1e-5); the clustering decoder sees
the patch tokens only (no class token) through a bias-free projection, with rows 1..L of a 1-D table as
positions; EMA momentum 0.99 and centre momentum 0.8, centring on teacher probabilities. EMA teachers,
centres and the prototype norm change only in `after_step`. The student video encoder is the exported
backbone (the official kNN and linear probes use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightly.models.utils import get_at_index
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.backbones import build_backbone
from ssl_distill.losses import ClusterDistillationLoss, SelfDistillationLoss
from ssl_distill.losses.cluster_distillation import standardize_tokens
from ssl_distill.modules.centering import CENTER_ON
from ssl_distill.modules.decoder import DecoderConfig, PixelDecoder
from ssl_distill.modules.frame_alignment import frame_targets, official_decoder_order
from ssl_distill.modules.masking import tube_mask
from ssl_distill.modules.prototypes import Prototypes
from ssl_distill.objectives.base import Output, SelfDistillationConfig, SelfDistillationObjective
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import choice, ranged


@dataclass
class DISCOVRConfig(SelfDistillationConfig):
    name: str = "discovr"
    mask_ratio: float = ranged(0.9, "[0, 1)")  # tube masks of the clustering view and the video DINO student views
    video_views: int = ranged(4, "[1, inf)")
    image_mask_ratio: float = ranged(0.9, "[0, 1)")
    image_views: int = ranged(4, "[1, inf)")
    image_qkv_bias: bool = False  # official image encoders: the encoder class's defaults
    image_norm_eps: float = ranged(1e-5, "(0, inf)")
    hidden_dim: int = ranged(2048, "[1, inf)")  # DINO heads (all four)
    bottleneck_dim: int = ranged(256, "[1, inf)")
    output_dim: int = ranged(16384, "[1, inf)")
    teacher_temp: float = ranged(0.07, "(0, inf)")
    warmup_teacher_temp: float = ranged(0.04, "(0, inf)")
    warmup_teacher_temp_fraction: float = ranged(0.075, "[0, 1]")  # of all steps, linear; official: 30 of 400 epochs
    center_momentum: float = ranged(0.8, "[0, 1]")  # the model's constructor default, which the released runs used
    center_on: str = choice("probabilities", CENTER_ON)  # official: teacher probabilities (DINO: logits)
    momentum_start: float = ranged(0.99, "[0, 1]")  # EMA momentum, constant 0.99 in the released runs
    momentum_end: float = ranged(0.99, "[0, 1]")
    num_prototypes: int = ranged(3000, "[1, inf)")
    sinkhorn_epsilon: float = ranged(0.05, "(0, inf)")
    sinkhorn_iterations: int = ranged(10, "[1, inf)")
    cluster_temp: float = ranged(0.1, "(0, inf)")
    official_misalignment: bool = False  # True: the released code's token pairing (docs/methods/discovr.md)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(dim=384, depth=4, heads=6))
    video_dino_weight: float = ranged(1.0, "[0, inf)")
    image_dino_weight: float = ranged(1.0, "[0, inf)")  # official: x 256 / frames per chunk (0.25 at 16 clips x 64 frames)
    cluster_weight: float = ranged(1.0, "[0, inf)")


def encode_views(encoder: nn.Module, inputs: Tensor, masks: list[Tensor]) -> Tensor:
    """Embed once, then encode every masked view in one batch: (B, C, T, H, W) and V index masks
    (B, 1 + K) -> (V, B, 1 + K, D) final-norm tokens."""
    tokens = encoder.embed(inputs)
    x, _ = encoder.run_blocks(torch.cat([get_at_index(tokens, mask) for mask in masks]))
    return encoder.final_norm()(x).unflatten(0, (len(masks), len(inputs)))


@OBJECTIVES.register("discovr")
class DISCOVR(SelfDistillationObjective):
    """batch['video']: (B, C, T, H, W) -> video DINO + image DINO + cluster distillation."""

    Config = DISCOVRConfig
    requires = frozenset({"video"})
    model_kinds = frozenset({"video_vit"})
    default_model = {"kind": "video_vit", "pos_embed": "sincos_1d"}

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.video_student = build_backbone(cfg.model)
        self.image_student = build_backbone(
            cfg.model, num_frames=1, tubelet_size=1, qkv_bias=o.image_qkv_bias, norm_eps=o.image_norm_eps
        )
        self.video_teacher, self.image_teacher = self.ema.copy(self.video_student), self.ema.copy(self.image_student)
        dim = self.video_student.embed_dim
        self.video_student_head, self.image_student_head = self.dino_head(dim), self.dino_head(dim)
        self.video_teacher_head = self.ema.copy(self.video_student_head)
        self.image_teacher_head = self.ema.copy(self.image_student_head)
        positions = "sincos_1d" if cfg.model.pos_embed == "sincos_1d" else "sincos"
        self.decoder = PixelDecoder(
            self.video_student.grid_size, dim, dim, o.decoder, num_prefix_tokens=0, embed_bias=False, positions=positions
        )
        self.prototypes = Prototypes(o.num_prototypes, dim)
        self.video_center, self.image_center = self.centering(), self.centering()
        self.dino_loss = SelfDistillationLoss(o.student_temp, skip_same_view=False)
        self.cluster = ClusterDistillationLoss(o.cluster_temp, o.sinkhorn_epsilon, o.sinkhorn_iterations)

    @property
    def backbone(self) -> nn.Module:
        return self.video_student

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        o = self.cfg.objective
        video = batch["video"]
        batch_size, frames = len(video), video.shape[2]
        images = video.transpose(1, 2).flatten(0, 1).unsqueeze(2)  # (B * T, C, 1, H, W)
        temperature = self.teacher_temperature(step)

        with torch.no_grad():
            video_teacher = self.video_center(self.video_teacher_head(self.video_teacher(video)), temperature)
            image_tokens = self.image_teacher.forward_features(images)
            image_teacher = self.image_center(self.image_teacher_head(image_tokens[:, 0]), temperature)
            patches = standardize_tokens(image_tokens[:, 1:].float()).unflatten(0, (batch_size, frames))
            target_scores = self.prototypes(frame_targets(patches, self.video_student.tubelet_size, o.official_misalignment))

        grid = self.video_student.grid_size
        masks = [tube_mask(batch_size, grid, o.mask_ratio, device=video.device) for _ in range(1 + o.video_views)]
        encoded = encode_views(self.video_student, video, masks)
        decoded = self.decoder(encoded[0, :, 1:], masks[0])  # (B, L, D) in patch order; no class token
        if o.official_misalignment:
            decoded = get_at_index(decoded, official_decoder_order(masks[0], self.video_student.num_patches))
        cluster = self.cluster(self.prototypes(decoded), target_scores)
        video_dino = self.dino_loss(video_teacher[None], self.video_student_head(encoded[1:, :, 0]))

        image_grid = self.image_student.grid_size  # (1, H', W'): a tube mask is a token mask per frame
        image_masks = [
            tube_mask(len(images), image_grid, o.image_mask_ratio, device=video.device) for _ in range(o.image_views)
        ]
        image_students = self.image_student_head(encode_views(self.image_student, images, image_masks)[:, :, 0])
        image_dino = self.dino_loss(image_teacher[None], image_students)

        loss = o.video_dino_weight * video_dino + o.image_dino_weight * image_dino + o.cluster_weight * cluster
        logs = {
            "video_dino": video_dino.detach(),
            "image_dino": image_dino.detach(),
            "cluster": cluster.detach(),
            **self.schedule_logs(step),
        }
        return Output(loss, logs)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.prototypes.normalize_()
