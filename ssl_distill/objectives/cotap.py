"""CoTAP: semantic concentration for dense self-supervised representations (Wen, Xu, Dai, Cong, Huang,
"Semantic Concentration for Self-Supervised Dense Representations Learning", IEEE TPAMI 2025,
arXiv 2509.09429; github.com/KID-7391/CoTAP). See docs/methods/cotap.md.

This follows a reconstruction: no official code could be read, only the repository's README and the
paper's abstract. Certain from those: patch correspondences are distilled from an EMA teacher with a
noise-tolerant, continuous-target AP ranking loss (no thresholding of the teacher's pseudo labels),
through an object-aware filter that represents patches by learnable object prototypes via cross
attention; partner views come from a second augmentation (intra-instance) and from precomputed nearest
neighbour images (inter-image, STEGO-style NNS files); training continues from an existing checkpoint.
Every reconstructed choice is a key of `CoTAPConfig` with the default documented there:

- patch branch: backbone patch tokens -> Leopart-style MLP projection -> L2 norm -> object-aware filter
  (`modules/object_filter.py`); the teacher holds EMA copies of the backbone, projection and filter;
- scores S_ij = cos(student query patch i of view u, teacher patch j of view v); targets
  Y_ij = target_map(cos(teacher patch i of u, teacher patch j of v)), no gradient;
- loss = base_weight * DINO on the class token (the init method's own loss, multi-crop) +
  intra_weight * CoTAP(u <-> v, the two global crops) + inter_weight * CoTAP(global crops <-> the
  neighbour's first global crop, both directions), CoTAP = 1 − mean AP (`losses/ranking.py`);
- `init`: the backbone to continue from (a DINO run, checkpoint or export; with `init_heads` also the
  run's DINO heads and centre, so the class-token term continues instead of restarting from a random head);
  `backbone_lr_scale` scales the backbone's learning rate against the heads' (Leopart: 1e-5 vs 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.backbones import build_backbone, load_backbone_into
from ssl_distill.errors import ConfigError
from ssl_distill.losses import ContinuousAPLoss, SelfDistillationLoss
from ssl_distill.modules.heads import patch_projection
from ssl_distill.modules.object_filter import ObjectAwareFilter
from ssl_distill.modules.teacher import load_part_into
from ssl_distill.objectives.base import Output, SelfDistillationConfig, SelfDistillationObjective
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import choice, ranged

TARGET_MAPS = ("clamp", "affine", "softmax")
RANK_ON = ("filtered", "attention")


@dataclass
class CoTAPConfig(SelfDistillationConfig):
    """[D] = reconstructed default (no official code); Leopart's fine-tuning settings where CoTAP's
    README says it builds on Leopart."""

    name: str = "cotap"
    init: str | None = None  # backbone to continue from: run dir, checkpoint or .safetensors (None: from scratch)
    init_heads: bool = False  # also take the DINO heads and centre of `init` (a DINO run or its checkpoint)
    backbone_lr_scale: float = ranged(0.1, "[0, inf)")  # [D] Leopart: backbone lr 1e-5, heads 1e-4
    momentum_start: float = ranged(0.9995, "[0, 1]")  # [D] Leopart's EMA, 0.9995 -> 1
    base_weight: float = ranged(1.0, "[0, inf)")  # [D] DINO on the class token (0 turns it off)
    intra_weight: float = ranged(1.0, "[0, inf)")  # [D]
    inter_weight: float = ranged(1.0, "[0, inf)")  # [D]
    patch_hidden_dim: int = ranged(2048, "[1, inf)")  # [D] Leopart's projection head
    patch_dim: int = ranged(256, "[1, inf)")  # [D]
    num_prototypes: int = ranged(300, "[1, inf)")  # [D] "e.g. 64-300"
    filter_temperature: float = ranged(0.1, "(0, inf)")  # [D] cosine attention logits / this (SwAV / Leopart prototype temperature)
    filter_residual: bool = False  # [D] output = prototypes mix (+ input with true)
    rank_on: str = choice("filtered", RANK_ON)  # [D] filtered (ẑ) | attention (A over prototypes)
    target_map: str = choice("softmax", TARGET_MAPS)  # [D] softmax (row softmax(cos / T) / row max) | clamp(cos, 0, 1) | affine (1 + cos) / 2
    target_temperature: float = ranged(0.05, "(0, inf)")  # [D] T of the softmax target map
    rank_temperature: float = ranged(0.01, "(0, inf)")  # [D] sigmoid step temperature (SmoothAP, SOPRC)
    normalize_ap: bool = False  # [D] divide AP by the ideal AP of the targets (nDCG-style)
    chunk_size: int = ranged(1024, "[1, inf)")  # queries ranked at a time at most (chunk * patches^2 floats; CPU: fewer)


def continuous_targets(similarity: Tensor, kind: str, temperature: float = 0.1) -> Tensor:
    """Teacher cosine similarities (..., Q, C) -> continuous relevance in [0, 1], monotone, no threshold."""
    if kind == "clamp":
        return similarity.clamp(0.0, 1.0)
    if kind == "affine":
        return (1.0 + similarity) / 2
    if kind == "softmax":
        weights = torch.softmax(similarity / temperature, dim=-1)
        return weights / weights.amax(dim=-1, keepdim=True)
    raise ValueError(f"target_map must be one of {TARGET_MAPS}, got '{kind}'")


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """(B, Q, D), (B, C, D) -> (B, Q, C) cosine similarities."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(1, 2)


@OBJECTIVES.register("cotap")
class CoTAP(SelfDistillationObjective):
    """batch['views']: 2 global crops then local crops (multi-crop); batch['partner_views']: the same
    transform of a nearest-neighbour image (`data.name: neighbors`), whose first global crop is used."""

    Config = CoTAPConfig
    requires = frozenset({"views", "partner_views"})
    default_transform = {"name": "multicrop"}

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.student = build_backbone(cfg.model, dynamic_img_size=True)
        if o.init is not None:
            load_backbone_into(self.student, o.init)  # before the teacher copies it
        dim = self.student.embed_dim
        self.student_head = self.dino_head(dim)
        self.student_projection = patch_projection(dim, o.patch_hidden_dim, o.patch_dim)
        self.student_filter = ObjectAwareFilter(o.patch_dim, o.num_prototypes, o.filter_temperature, o.filter_residual)
        self.teacher = self.ema.copy(self.student)
        self.teacher_head = self.ema.copy(self.student_head)
        self.teacher_projection = self.ema.copy(self.student_projection)
        self.teacher_filter = self.ema.copy(self.student_filter)
        self.center = self.centering()
        if o.init_heads:
            if o.init is None:
                raise ConfigError("objective.init_heads needs objective.init (a DINO run directory or checkpoint)")
            for module, part in ((self.student_head, "student_head"), (self.teacher_head, "teacher_head"), (self.center, "center")):
                load_part_into(module, o.init, part)
        self.dino_loss = SelfDistillationLoss(o.student_temp, skip_same_view=True)
        self.ranking = ContinuousAPLoss(o.rank_temperature, o.normalize_ap, o.chunk_size)

    @property
    def backbone(self) -> nn.Module:
        return self.teacher

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The base groups, split again into backbone (lr * backbone_lr_scale) and heads."""
        backbone = {id(p) for p in self.student.parameters()}
        groups = []
        for group in super().param_groups(weight_decay):
            for scale, keep in ((self.cfg.objective.backbone_lr_scale, True), (1.0, False)):
                params = [p for p in group["params"] if (id(p) in backbone) == keep]
                if params:
                    groups.append({**group, "params": params, "lr_scale": scale})
        return groups

    def _patches(self, projection: nn.Module, object_filter: nn.Module, tokens: Tensor) -> Tensor:
        """(B, N, D) patch tokens -> (B, N, patch_dim) filtered embeddings or (B, N, M) attention."""
        filtered, attention = object_filter(F.normalize(projection(tokens), dim=-1))
        return filtered if self.cfg.objective.rank_on == "filtered" else attention

    def _cotap(self, student: Tensor, teacher: Tensor, pairs: list[tuple[int, int]]) -> Tensor:
        """Mean CoTAP loss over (query view u, key view v) pairs; student/teacher (V, B, N, E)."""
        o = self.cfg.objective
        losses = []
        for u, v in pairs:
            targets = continuous_targets(cosine(teacher[u], teacher[v]), o.target_map, o.target_temperature)
            losses.append(self.ranking(cosine(student[u], teacher[v]), targets))
        return torch.stack(losses).mean()

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        o = self.cfg.objective
        views, partner = batch["views"], batch["partner_views"][0]
        global_views, local_views = views[:2], views[2:]
        dense_views = torch.cat([*global_views, partner])  # anchor crop 0, anchor crop 1, neighbour crop 0
        with torch.no_grad():
            teacher_cls, teacher_tokens = self.teacher.features(dense_views)
            teacher_out = self.teacher_head(teacher_cls[: 2 * len(partner)]).unflatten(0, (2, -1))
            teacher_dense = self._patches(self.teacher_projection, self.teacher_filter, teacher_tokens).unflatten(0, (3, -1))
        student_cls, student_tokens = self.student.features(dense_views)
        student_dense = self._patches(self.student_projection, self.student_filter, student_tokens).unflatten(0, (3, -1))
        student_out = [self.student_head(student_cls[: 2 * len(partner)])]
        if local_views:
            student_out.append(self.student_head(self.student(torch.cat(local_views))))
        teacher_probs = self.center(teacher_out, self.teacher_temperature(step))
        dino = self.dino_loss(teacher_probs, torch.cat(student_out).unflatten(0, (len(views), -1)))
        intra = self._cotap(student_dense, teacher_dense, [(0, 1), (1, 0)])
        inter = self._cotap(student_dense, teacher_dense, [(0, 2), (1, 2), (2, 0), (2, 1)])
        loss = o.base_weight * dino + o.intra_weight * intra + o.inter_weight * inter
        logs = {"dino": dino.detach(), "cotap_intra": intra.detach(), "cotap_inter": inter.detach()}
        return Output(loss, {**logs, **self.schedule_logs(step)})
