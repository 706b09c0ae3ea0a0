"""TIPS (Maninis et al., ICLR 2025, "TIPS: Text-Image Pretraining with Spatial awareness"). The official
repository (google-deepmind/tips) releases inference code only (`pytorch/image_encoder.py`,
`pytorch/text_encoder.py`, `scenic/models/*.py`); the objective follows the paper's eq. (1) and the v1
training diagram. Every choice they leave open is a config key with its recorded default. See
docs/methods/tips.md.

    L = Σ_k contrastive(CLS-k, caption stream k) + α DINO(local crops -> teacher CLS-1) + β iBOT(masked patches)

- Image tower: a timm ViT with two class tokens (timm's class token + one register token; neither gets a
  position) and a text tower from scratch (`objective.text`, tokenizer from the dataset's options), of
  the same width: no projection heads. One learned temperature τ (log τ learned, clamped at
  `temperature_min`) for every stream; CLIP's symmetric InfoNCE (open_clip `ClipLoss`).
- Student passes per step: the whole unmasked image (both class tokens -> contrastive), the same image
  block-masked (learned mask token before positions -> iBOT on the masked patches) and the local crops
  (CLS-1 -> DINO). The EMA teacher (image tower and heads only; the text tower has none) sees the whole
  unmasked image once; its CLS-1 and patch outputs are centred (two centres) and sharpened.
- Exported: the student image tower (`backbone.safetensors`, the tower the text tower was trained
  against) and the text tower with its tokenizer (`text.safetensors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from lightly.models.utils import random_block_mask
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.backbones import TextConfig, build_backbone
from ssl_distill.backbones.tokenizer import tokenizer_from_options
from ssl_distill.data.loader import seeded_call
from ssl_distill.errors import ConfigError
from ssl_distill.losses import ImageTextContrastiveLoss, MaskedPatchDistillationLoss, SelfDistillationLoss
from ssl_distill.objectives.base import Output, SelfDistillationConfig, SelfDistillationObjective
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import choice, ranged


@dataclass
class TIPSConfig(SelfDistillationConfig):
    """Defaults: the paper where it says, else DINOv2 (heads, temperatures, masking) and CLIP (τ) [assumed]."""

    name: str = "tips"
    text: TextConfig = field(default_factory=TextConfig)
    num_cls_tokens: int = choice(2, (1, 2))  # 2: CLS-k <-> caption stream k (TIPS); 1: one class token, one stream (CLIP)
    temperature_init: float = ranged(0.07, "(0, inf)")
    temperature_min: float = ranged(0.001, "(0, inf)")
    contrastive_weight: float = ranged(1.0, "[0, inf)")
    distill_weight: float = ranged(1.0, "[0, inf)")  # α; 0 turns the DINO term (and its student pass) off
    mask_weight: float = ranged(1.0, "[0, inf)")  # β; 0 turns the iBOT term (and its student pass) off
    mask_probability: float = ranged(0.5, "[0, 1]")  # fraction of the batch that gets a block mask
    mask_ratio_min: float = ranged(0.1, "[0, 1)")  # per masked image, a ratio in [min, max] (DINOv2's spread over the batch)
    mask_ratio_max: float = ranged(0.5, "[0, 1)")
    separate_ibot_head: bool = False  # DINOv2's default: the DINO head also projects patch tokens
    teacher_temp: float = ranged(0.07, "(0, inf)")
    warmup_teacher_temp: float = ranged(0.04, "(0, inf)")
    momentum_start: float = ranged(0.994, "[0, 1]")  # cosine to momentum_end; equal values keep it fixed (SILC)
    momentum_end: float = ranged(1.0, "[0, 1]")


@OBJECTIVES.register("tips")
class TIPS(SelfDistillationObjective):
    """batch['views']: the whole image (B, C, H, W), then local crops; batch['text'] (B, K, L) token ids and
    batch['text_mask'] (B, K, L), caption stream k paired with class token k."""

    Config = TIPSConfig
    requires = frozenset({"views", "text", "text_mask"})
    default_transform = {"name": "global_local"}

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        streams = cfg.data.options.get("captions")
        if streams is None or "tokenizer" not in cfg.data.options:
            raise ConfigError(f"objective 'tips' needs an image-text dataset (data.name={cfg.data.name} has no captions)")
        if len(streams) < o.num_cls_tokens:
            raise ConfigError(
                f"objective.num_cls_tokens={o.num_cls_tokens} needs as many caption streams; data.options.captions={list(streams)}"
            )
        self.student = build_backbone(cfg.model, dynamic_img_size=True, reg_tokens=o.num_cls_tokens - 1)
        self.student.encoder.mask_token.requires_grad_(True)  # iBOT replaces masked patches by a learned token
        width = self.student.embed_dim
        if o.text.width not in (None, width):
            raise ConfigError(f"objective.text.width={o.text.width} must equal the image width {width} (no projection heads)")
        d = cfg.data.options
        tokenizer = tokenizer_from_options(d.tokenizer, d.tokenizer_file, d.context_length, d.lowercase)
        self.text_tower = build_backbone(o.text, width=width, tokenizer=tokenizer.spec)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(o.temperature_init)))
        self.student_head = self.dino_head(width)
        self.student_ibot_head = self.dino_head(width) if o.separate_ibot_head else self.student_head
        self.teacher = self.ema.copy(self.student)
        self.teacher_head = self.ema.copy(self.student_head)
        self.teacher_ibot_head = self.ema.copy(self.student_ibot_head) if o.separate_ibot_head else self.teacher_head
        self.dino_center, self.ibot_center = self.centering(), self.centering()
        self.contrastive = ImageTextContrastiveLoss()
        self.dino_loss = SelfDistillationLoss(o.student_temp, skip_same_view=False)
        self.ibot_loss = MaskedPatchDistillationLoss(o.student_temp)

    @property
    def backbone(self) -> nn.Module:
        return self.student

    def extra_exports(self) -> dict[str, nn.Module]:
        return {"text.safetensors": self.text_tower}

    def temperature(self) -> Tensor:
        return self.log_temperature.exp().clamp(min=self.cfg.objective.temperature_min)

    def block_mask(self, batch: int) -> Tensor:
        """(B, L) bool: block masks for `mask_probability` of the images (lightly's DINOv2 block masking),
        drawn from a seed taken off torch's generator so that runs and resumes repeat."""
        o, grid = self.cfg.objective, self.student.grid_size
        seed = int(torch.randint(2**31 - 1, ()))
        masks = seeded_call(seed, lambda: random_block_mask(
            (batch, *grid), o.mask_probability, o.mask_ratio_min, o.mask_ratio_max,
        ))
        return masks.flatten(1)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        o = self.cfg.objective
        views, text, text_mask = batch["views"], batch["text"], batch["text_mask"]
        image, local_views = views[0], views[1:]
        prefix = self.student.num_prefix_tokens
        tau = self.temperature()
        logs: dict[str, Tensor | float] = {"temperature": tau.detach(), "temperature_raw": self.log_temperature.detach().exp()}

        # (a) contrastive: class token k of the unmasked image <-> caption stream k
        tokens = self.student.forward_features(image)
        streams = o.num_cls_tokens
        texts = self.text_tower(text[:, :streams].flatten(0, 1), text_mask[:, :streams].flatten(0, 1))
        texts = texts.unflatten(0, (len(image), streams))
        loss = torch.zeros((), device=image.device)
        for k in range(streams):
            term = self.contrastive(tokens[:, k], texts[:, k], tau)
            loss = loss + o.contrastive_weight * term
            logs[f"contrastive_{k + 1}"] = term.detach()

        if o.distill_weight or o.mask_weight:
            temperature = self.teacher_temperature(step)
            with torch.no_grad():
                teacher_tokens = self.teacher.forward_features(image)
        # (c) DINO: CLS-1 of every local crop -> the teacher's CLS-1 on the whole image
        if o.distill_weight and local_views:
            teacher_probs = self.dino_center(self.teacher_head(teacher_tokens[:, 0]), temperature)
            students = self.student_head(self.student(torch.cat(local_views))).unflatten(0, (len(local_views), len(image)))
            distill = self.dino_loss(teacher_probs[None], students)
            loss = loss + o.distill_weight * distill
            logs["dino"] = distill.detach()
        # (b) iBOT: masked patches of the masked image -> the teacher's patches of the unmasked image
        if o.mask_weight:
            mask = self.block_mask(len(image)).to(image.device)
            if mask.any():
                hidden = self.student.final_norm()(self.student.run_blocks(self.student.embed(image, patch_mask=mask))[0])
                students = self.student_ibot_head(hidden[:, prefix:][mask])
                targets = self.ibot_center(self.teacher_ibot_head(teacher_tokens[:, prefix:][mask]), temperature)
                masked = self.ibot_loss(targets, students, mask)
                loss = loss + o.mask_weight * masked
                logs["ibot"] = masked.detach()
        return Output(loss, {**logs, **self.schedule_logs(step)})
