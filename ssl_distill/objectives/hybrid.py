"""Hybrid Distillation (Shi et al., ICLR 2024, "Hybrid Distillation: Connecting Masked Autoencoders with
Contrastive Learners", arXiv 2306.15876). See docs/methods/hybrid.md.

This follows a RECONSTRUCTION of the method, not code: the official repository (lygsbw/hybriddistill,
commit 58f5575) holds only a README ("code is coming soon"), and of the paper only the abstract and the
reproducibility card could be read. Verified: a supervised or contrastive teacher's feature maps and a
masked-image-modelling teacher's token relations jointly guide one plain ViT student, and progressive
redundant token masking cuts the cost. Every other choice below is an assumption, exposed as a config key
with the recorded default:

- Both frozen teachers see the full image (`teacher_sees_full_image`); their outputs are gathered at the
  tokens the student keeps. The student reads only the kept tokens; no decoder, no pixel loss.
- Features (FD-style, Wei et al. 2022): the contrastive teacher's block outputs (`teacher_feature_blocks`,
  default the last; after its final norm, `feature_final_norm`), whitened by a parameter-free LayerNorm
  (`whitening_eps`, FD's 1e-5), against a Linear projection of the student's (`student_feature_blocks`,
  after its final norm), smooth-L1 with `beta` 2.
- Relations: softmax(q kᵀ / √d) of the MIM teacher's blocks (`teacher_relation_blocks`, default the last),
  recomputed in float32 from q and k captured at `attn.qkv` (timm's fused attention keeps no map), over
  `relation_heads` MiniLM-style relation heads (default the teacher's head count); KL(teacher ‖ student)
  summed over keys, averaged over rows (`relation_distance`), weight `relation_weight` (alpha, 1).
- Tokens: class token included (`include_cls`). Gathering the teacher's q and k before the softmax equals
  slicing its full map and renormalising each row.
- Progressive redundant token masking (`masking.*`): the score is a teacher's last-block class-token
  attention to each patch, averaged over heads (`score_source`, default the contrastive teacher); the
  lowest-scoring patches are dropped (top-K, or sampled with `stochastic`); the drop ratio ramps from
  `start_ratio` to `max_ratio` (`schedule` linear, between fractions `ramp_begin` and `ramp_end` of training)
  and is logged as `drop_ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightly.models import utils
from torch import Tensor, nn

from ssl_distill.backbones import build_backbone
from ssl_distill.errors import ConfigError
from ssl_distill.losses import RelationDistillationLoss, WhitenedSmoothL1Loss
from ssl_distill.losses.relation_distillation import RELATION_DISTANCES
from ssl_distill.modules.attention import QKCapture, relation_logits
from ssl_distill.modules.masking import keep_by_score
from ssl_distill.modules.teacher import FrozenTeacher, TeacherConfig, load_teacher_backbone
from ssl_distill.objectives.base import Objective, Output
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schedules import RAMPS, ramp
from ssl_distill.schema import choice, ranged

SCORE_SOURCES = ("contrastive", "mim")


@dataclass
class RedundantMaskingConfig:
    """Progressive redundant token masking (`objective.masking`); every key an assumption."""

    score_source: str = choice("contrastive", SCORE_SOURCES)  # contrastive | mim: whose last-block class-token attention scores patches
    start_ratio: float = ranged(0.0, "[0, 1)")
    max_ratio: float = ranged(0.5, "[0, 1)")  # fraction of patches dropped once the ramp ends
    schedule: str = choice("linear", RAMPS)  # linear | cosine | step | constant
    ramp_begin: float = ranged(0.0, "[0, 1]")  # fraction of training where the ratio starts to grow
    ramp_end: float = ranged(0.5, "[0, 1]")  # fraction of training where it reaches max_ratio
    stochastic: bool = False  # sample kept patches in proportion to their score instead of top-K


@dataclass
class HybridConfig:
    name: str = "hybrid"
    contrastive_teacher: TeacherConfig = field(default_factory=TeacherConfig)  # supervised / contrastive ViT
    mim_teacher: TeacherConfig = field(default_factory=TeacherConfig)  # masked-image-modelling ViT (MAE)
    feature_weight: float = ranged(1.0, "[0, inf)")
    relation_weight: float = ranged(1.0, "[0, inf)")  # alpha
    student_feature_blocks: list[int] | None = None  # 0-based; None: the last block
    teacher_feature_blocks: list[int] | None = None  # of the contrastive teacher; None: its last block
    feature_final_norm: bool = True  # both models' final norm on the features (FD's student output); false: pre-norm
    whitening_eps: float = ranged(1e-5, "(0, inf)")  # FD's LayerNorm default (G2SD uses 1e-6)
    beta: float = ranged(2.0, "(0, inf)")
    student_relation_blocks: list[int] | None = None  # None: the last block
    teacher_relation_blocks: list[int] | None = None  # of the MIM teacher; None: its last block
    relation_heads: int | None = ranged(None, "[1, inf)")  # None: the MIM teacher's head count
    relation_distance: str = choice("kl", RELATION_DISTANCES)  # kl (teacher ‖ student) | smooth_l1 | mse
    include_cls: bool = True
    teacher_sees_full_image: bool = True  # false: the teachers read only the kept tokens (DMAE-style)
    masking: RedundantMaskingConfig = field(default_factory=RedundantMaskingConfig)


@dataclass
class TeacherOutputs:
    """features: contrastive-teacher block -> (B, N, D) pre-norm output; *_qk: block -> (q, k), each
    (B, N, C), of the captured blocks (relations, redundancy scores). N = 1 + L on the full image."""

    features: dict[int, Tensor]
    contrastive_qk: dict[int, tuple[Tensor, Tensor]]
    mim_qk: dict[int, tuple[Tensor, Tensor]]


def _pairs(student: list[int] | None, teacher: list[int] | None, depths: tuple[int, int], what: str) -> tuple[list[int], list[int]]:
    student = list(student) if student is not None else [depths[0] - 1]
    teacher = list(teacher) if teacher is not None else [depths[1] - 1]
    if len(student) != len(teacher):
        raise ConfigError(f"objective.student_{what}_blocks {student} and teacher_{what}_blocks {teacher} must pair up")
    for blocks, depth, side in ((student, depths[0], "student"), (teacher, depths[1], "teacher")):
        if any(not 0 <= b < depth for b in blocks):
            raise ConfigError(f"objective.{side}_{what}_blocks {blocks}: blocks of a {depth}-block encoder are 0..{depth - 1}")
    return student, teacher


@OBJECTIVES.register("hybrid")
class Hybrid(Objective):
    """batch['views'][0]: (B, C, H, W) -> feature distillation from the contrastive teacher + relation
    distillation from the MIM teacher, on the tokens left after redundant token masking."""

    Config = HybridConfig

    def __init__(self, cfg: Any, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        m = o.masking
        self.backbone = build_backbone(cfg.model)
        contrastive, mim = load_teacher_backbone(o.contrastive_teacher), load_teacher_backbone(o.mim_teacher)
        for teacher, which in ((contrastive, "contrastive_teacher"), (mim, "mim_teacher")):
            if teacher.grid_size != self.backbone.grid_size:
                raise ConfigError(
                    f"objective.{which}: patch grid {teacher.grid_size} differs from the student's "
                    f"{self.backbone.grid_size}; the losses pair tokens at the same positions"
                )
        depth = self.backbone.depth
        self.student_feature_blocks, self.teacher_feature_blocks = _pairs(
            o.student_feature_blocks, o.teacher_feature_blocks, (depth, contrastive.depth), "feature"
        )
        self.student_relation_blocks, self.teacher_relation_blocks = _pairs(
            o.student_relation_blocks, o.teacher_relation_blocks, (depth, mim.depth), "relation"
        )
        deepest = max(self.student_feature_blocks + self.student_relation_blocks)
        if deepest != depth - 1:
            raise ConfigError(
                f"objective.student_*_blocks: the deepest is {deepest}, so blocks {deepest + 1}..{depth - 1} of the "
                "student would never train; distil its last block or use a shallower model"
            )
        if not o.feature_final_norm:  # the loss never reaches it; frozen (LayerNorm at its identity init)
            self.backbone.final_norm().requires_grad_(False)
        scorer = contrastive if m.score_source == "contrastive" else mim
        self.score_block = scorer.depth - 1
        self.contrastive_qk = [self.score_block] if m.score_source == "contrastive" else []
        self.mim_qk = [*self.teacher_relation_blocks, *([self.score_block] if m.score_source == "mim" else [])]
        self.contrastive_teacher = FrozenTeacher(contrastive, [*self.teacher_feature_blocks, *self.contrastive_qk])
        self.mim_teacher = FrozenTeacher(mim, self.mim_qk)
        self.relation_heads = o.relation_heads or mim.transformer_blocks()[self.teacher_relation_blocks[0]].attn.num_heads
        for model, which in ((self.backbone, "student"), (mim, "mim_teacher")):
            if model.embed_dim % self.relation_heads:
                raise ConfigError(
                    f"objective.relation_heads={self.relation_heads} does not divide the {which}'s width {model.embed_dim}"
                )
        self.projections = nn.ModuleList(
            nn.Linear(self.backbone.embed_dim, contrastive.embed_dim) for _ in self.student_feature_blocks
        )
        self.feature_distance = WhitenedSmoothL1Loss(o.beta, o.whitening_eps)
        self.relation_distance = RelationDistillationLoss(o.relation_distance)

    def drop_ratio(self, step: int) -> float:
        m = self.cfg.objective.masking
        return ramp(step, self.max_steps, m.start_ratio, m.max_ratio, m.schedule, m.ramp_begin, m.ramp_end)

    def run_teachers(self, images: Tensor, idx_keep: Tensor | None = None) -> TeacherOutputs:
        contrastive, mim = self.contrastive_teacher, self.mim_teacher
        with QKCapture(contrastive.backbone.transformer_blocks(), self.contrastive_qk) as c_qk, QKCapture(
            mim.backbone.transformer_blocks(), self.mim_qk
        ) as m_qk:
            features = contrastive(images, idx_keep)
            mim(images, idx_keep)
        return TeacherOutputs(features, c_qk.qk, m_qk.qk)

    @torch.no_grad()
    def redundancy(self, qk: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
        """(B, L): the scoring teacher's last-block class-token attention to each patch, mean over heads."""
        q, k = qk[self.score_block]
        scorer = self.contrastive_teacher if self.cfg.objective.masking.score_source == "contrastive" else self.mim_teacher
        heads = scorer.backbone.transformer_blocks()[self.score_block].attn.num_heads
        return relation_logits(q, k, heads).softmax(dim=-1)[:, :, 0, 1:].mean(dim=1)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        o = self.cfg.objective
        images = batch["views"][0]
        ratio = self.drop_ratio(step)
        teachers = self.run_teachers(images) if o.teacher_sees_full_image else None
        idx_keep = self.keep(images, ratio, teachers)
        feature_loss, relation_loss = self.distill(images, idx_keep, teachers)
        loss = o.feature_weight * feature_loss + o.relation_weight * relation_loss
        logs = {"feature": feature_loss.detach(), "relation": relation_loss.detach(), "drop_ratio": ratio}
        return Output(loss, {**logs, "kept_tokens": float(idx_keep.shape[1])})

    def keep(self, images: Tensor, ratio: float, teachers: TeacherOutputs | None) -> Tensor:
        """idx_keep (B, 1 + K): the class token and the patches left after dropping the `ratio` most
        redundant ones (all of them, in order, at ratio 0), scored on the full image before the student runs."""
        if ratio == 0:
            return torch.arange(self.backbone.num_patches + 1, device=images.device).expand(len(images), -1)
        contrastive = self.cfg.objective.masking.score_source == "contrastive"
        teachers = teachers or self.run_teachers(images)
        scores = self.redundancy(teachers.contrastive_qk if contrastive else teachers.mim_qk)
        return keep_by_score(scores, ratio, self.cfg.objective.masking.stochastic)

    def distill(self, images: Tensor, idx_keep: Tensor | None, teachers: TeacherOutputs | None) -> tuple[Tensor, Tensor]:
        """The feature and relation losses on the tokens idx_keep (all tokens when None). Full-image teacher
        outputs (`teachers`) are gathered there; without them the teachers read the kept tokens only."""
        o = self.cfg.objective
        positions = idx_keep
        if teachers is None:
            teachers, positions = self.run_teachers(images, idx_keep), None
        first = 0 if o.include_cls else 1

        def teacher_tokens(tokens: Tensor) -> Tensor:
            return (tokens if positions is None else utils.get_at_index(tokens, positions))[:, first:]

        with QKCapture(self.backbone.transformer_blocks(), self.student_relation_blocks) as student_qk:
            encoded = self.backbone.encode(images, idx_keep, taps=self.student_feature_blocks)
        feature_loss = images.new_zeros((), dtype=torch.float32)
        for s, t, projection in zip(self.student_feature_blocks, self.teacher_feature_blocks, self.projections):
            student, target = encoded.taps[s], teachers.features[t]
            if o.feature_final_norm:
                student = self.backbone.final_norm()(student)
                target = self.contrastive_teacher.backbone.final_norm()(target)
            feature_loss = feature_loss + self.feature_distance(teacher_tokens(target), projection(student[:, first:]))
        relation_loss = images.new_zeros((), dtype=torch.float32)
        for s, t in zip(self.student_relation_blocks, self.teacher_relation_blocks):
            q_t, k_t = (teacher_tokens(x) for x in teachers.mim_qk[t])
            q_s, k_s = (x[:, first:] for x in student_qk.qk[s])
            relation_loss = relation_loss + self.relation_distance(
                relation_logits(q_t, k_t, self.relation_heads), relation_logits(q_s, k_s, self.relation_heads)
            )
        return feature_loss, relation_loss
