"""DISCOVR (Mishra et al., NeurIPS 2025, "Self-supervised Learning of Echocardiographic Video
Representations via Online Cluster Distillation"), after the official `models/modeling_pretrain.py`
and `engine/engine_for_pretraining.py` (spec: shared/research/discovr.md).

Three terms, each weighted:
- video DINO: V tube-masked views of the clip (student) against the full clip (EMA video teacher);
- image DINO: every frame, V token-masked views (image student) against the full frame (EMA image
  teacher);
- semantic cluster distillation: the image teacher's patch tokens, standardised per frame, are
  assigned to prototypes by Sinkhorn; the decoder output of a tube-masked clip predicts those hard
  assignments. Only the video student, the decoder and the prototypes learn from it.

The image encoders are video ViTs over one frame (tubelet 1), as in the official code. EMA teachers,
DINO centres and the prototype norm change only in `after_step`. The student video encoder is the
exported backbone (the official kNN and linear probes use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, get_at_index, update_momentum
from lightly.utils.scheduler import cosine_schedule
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.backbones.video_vit import VideoViT
from ssl_distill.losses import ClusterDistillationLoss
from ssl_distill.losses.cluster_distillation import standardize_tokens
from ssl_distill.modules.decoder import PixelDecoder
from ssl_distill.modules.frame_alignment import frame_targets, official_decoder_order
from ssl_distill.modules.masking import tube_mask
from ssl_distill.modules.prototypes import Prototypes
from ssl_distill.modules.schedules import linear_warmup
from ssl_distill.modules.self_distillation import CenteredDistillation
from ssl_distill.objectives.base import Objective, Output
from ssl_distill.objectives.videomae import VideoConfig, build_video_vit, clip_frames
from ssl_distill.registry import OBJECTIVES


@dataclass
class DISCOVRConfig:
    name: str = "discovr"
    video: VideoConfig = field(default_factory=VideoConfig)
    mask_ratio: float = 0.9  # tube masks of the clustering view and of the video DINO student views
    video_views: int = 4
    image_mask_ratio: float = 0.9
    image_views: int = 4
    hidden_dim: int = 2048  # DINO heads (all four)
    bottleneck_dim: int = 256
    output_dim: int = 16384
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.075  # of all steps, linear; official: 30 of 400 epochs
    center_momentum: float = 0.9
    probability_centering: bool = False  # True: centre with teacher probabilities (official code)
    momentum_start: float = 0.996  # EMA momentum, cosine per step to momentum_end
    momentum_end: float = 0.996  # official: constant 0.996; 1.0 gives DINO's ramp
    num_prototypes: int = 3000
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 10
    cluster_temp: float = 0.1
    official_misalignment: bool = False  # True: the released code's token pairing (discovr.md)
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    video_dino_weight: float = 1.0
    image_dino_weight: float = 1.0  # official scales by 256 / frames per chunk (0.25 at 16 clips x 64 frames)
    cluster_weight: float = 1.0


def ema_copy(student: VideoViT) -> VideoViT:
    """A frozen copy of `student` with the same weights and no stochastic depth."""
    teacher = VideoViT(**{**student.config, "drop_path_rate": 0.0}, initialize=False)
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    return teacher


def encode_views(encoder: VideoViT, inputs: Tensor, masks: list[Tensor]) -> Tensor:
    """Embed once, then encode every masked view in one batch: (B, C, T, H, W) and V index masks
    (B, 1 + K) -> (V, B, 1 + K, D) final-norm tokens."""
    tokens = encoder.embed(inputs)
    x, _ = encoder.run_blocks(torch.cat([get_at_index(tokens, mask) for mask in masks]))
    return encoder.norm(x).unflatten(0, (len(masks), len(inputs)))


@OBJECTIVES.register("discovr")
class DISCOVR(Objective):
    """batch['video']: (B, C, T, H, W) -> video DINO + image DINO + cluster distillation."""

    Config = DISCOVRConfig
    requires = frozenset({"video"})

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.video_student = build_video_vit(cfg, clip_frames(cfg), o.video.tubelet_size)
        self.image_student = build_video_vit(cfg, 1, 1)
        self.video_teacher, self.image_teacher = ema_copy(self.video_student), ema_copy(self.image_student)
        self.video_student_head, self.video_teacher_head = self._head_pair()
        self.image_student_head, self.image_teacher_head = self._head_pair()
        dim = self.video_student.embed_dim
        self.decoder = PixelDecoder(
            self.video_student.grid_size, dim, dim, o.decoder_dim, o.decoder_depth, o.decoder_heads
        )
        self.prototypes = Prototypes(o.num_prototypes, dim)
        self.video_dino, self.image_dino = (
            CenteredDistillation(o.output_dim, o.student_temp, o.center_momentum, o.probability_centering)
            for _ in range(2)
        )
        self.cluster = ClusterDistillationLoss(o.cluster_temp, o.sinkhorn_epsilon, o.sinkhorn_iterations)
        self.temp_warmup_steps = int(o.warmup_teacher_temp_fraction * max_steps)

    def _head_pair(self) -> tuple[DINOProjectionHead, DINOProjectionHead]:
        o = self.cfg.objective
        student, teacher = (
            DINOProjectionHead(self.video_student.embed_dim, o.hidden_dim, o.bottleneck_dim, o.output_dim)
            for _ in range(2)
        )
        teacher.load_state_dict(student.state_dict())  # weight-normed heads cannot be deep-copied
        deactivate_requires_grad(teacher)
        return student, teacher

    @property
    def backbone(self) -> nn.Module:
        return self.video_student

    def teacher_temperature(self, step: int) -> float:
        o = self.cfg.objective
        return linear_warmup(step, self.temp_warmup_steps, o.warmup_teacher_temp, o.teacher_temp)

    def momentum(self, step: int) -> float:
        o = self.cfg.objective
        return cosine_schedule(step, self.max_steps, o.momentum_start, o.momentum_end)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        o = self.cfg.objective
        video = batch["video"]
        batch_size, frames = len(video), video.shape[2]
        images = video.transpose(1, 2).flatten(0, 1).unsqueeze(2)  # (B * T, C, 1, H, W)
        temperature = self.teacher_temperature(step)

        with torch.no_grad():
            video_teacher = self.video_teacher_head(self.video_teacher(video))
            image_tokens = self.image_teacher.forward_features(images)
            image_teacher = self.image_teacher_head(image_tokens[:, 0])
            patches = standardize_tokens(image_tokens[:, 1:].float()).unflatten(0, (batch_size, frames))
            target_scores = self.prototypes(frame_targets(patches, o.video.tubelet_size, o.official_misalignment))

        grid = self.video_student.grid_size
        masks = [tube_mask(batch_size, grid, o.mask_ratio, device=video.device) for _ in range(1 + o.video_views)]
        encoded = encode_views(self.video_student, video, masks)
        decoded = self.decoder(encoded[0], masks[0])  # (B, L, D) in patch order
        if o.official_misalignment:
            decoded = get_at_index(decoded, official_decoder_order(masks[0], self.video_student.num_patches))
        cluster = self.cluster(self.prototypes(decoded), target_scores)
        video_dino = self.video_dino(video_teacher, self.video_student_head(encoded[1:, :, 0]), temperature)

        image_grid = self.image_student.grid_size  # (1, H', W'): a tube mask is a token mask per frame
        image_masks = [
            tube_mask(len(images), image_grid, o.image_mask_ratio, device=video.device) for _ in range(o.image_views)
        ]
        image_students = self.image_student_head(encode_views(self.image_student, images, image_masks)[:, :, 0])
        image_dino = self.image_dino(image_teacher, image_students, temperature)

        loss = o.video_dino_weight * video_dino + o.image_dino_weight * image_dino + o.cluster_weight * cluster
        logs = {
            "video_dino": video_dino.detach(),
            "image_dino": image_dino.detach(),
            "cluster": cluster.detach(),
            "teacher_temp": temperature,
            "momentum": self.momentum(step),
        }
        return Output(loss, logs)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        momentum = self.momentum(step)
        update_momentum(self.video_student, self.video_teacher, m=momentum)
        update_momentum(self.video_student_head, self.video_teacher_head, m=momentum)
        update_momentum(self.image_student, self.image_teacher, m=momentum)
        update_momentum(self.image_student_head, self.image_teacher_head, m=momentum)
        self.video_dino.update_center()
        self.image_dino.update_center()
        self.prototypes.normalize_()
