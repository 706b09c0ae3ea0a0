"""The objective contract every method implements, and the two cores most methods build on.

- `Objective`: `forward(batch, step) -> Output(loss, logs)`, `after_step(step)` after each optimizer step,
  `backbone` (the encoder that is exported and evaluated), `param_groups`. The trainer knows nothing else.
- `MaskedModelingObjective`: mask -> encode the visible tokens (with block taps) -> decode -> reconstruct
  the hidden patches or tubelets (MAE, VideoMAE; DMAE, G2SD and Hybrid Distillation add teachers).
- `SelfDistillationObjective`: EMA teachers of declared students, DINO heads, centred and sharpened
  teacher outputs with a temperature warmup (DINO, DISCOVR; CMD, CoTAP and TIPS build on it).
- `ClassificationObjective`: supervised fine-tuning of a (pretrained) encoder with a head, MAE's recipe
  (layer-wise lr decay, label smoothing, mixup/cutmix) and validation top-1 (`finetune`, G2SD's specific
  stage).

A new method is one file in this package that subclasses one of them and registers itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from lightly.models import utils
from omegaconf import MISSING, DictConfig
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import Tensor, nn

from ssl_distill.backbones import Encoded, build_backbone, load_backbone, mask_from_keep
from ssl_distill.errors import BackboneLoadError, ConfigError
from ssl_distill.losses import MaskedReconstructionLoss
from ssl_distill.modules.centering import CENTER_ON, TeacherCentering
from ssl_distill.modules.classifier import POOLS, Classifier
from ssl_distill.modules.decoder import DecoderConfig, PixelDecoder
from ssl_distill.modules.ema import EMA
from ssl_distill.modules.heads import DINOHeadConfig, dino_head
from ssl_distill.modules.masking import tube_mask
from ssl_distill.modules.tubelets import normalize_tubelets
from ssl_distill.schedules import linear_warmup
from ssl_distill.schema import choice, ranged


@dataclass
class Output:
    """loss: the scalar to back-propagate; logs: named scalars (each loss term, schedules)."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


class Objective(nn.Module):
    """One SSL method: owns its student(s), teacher(s) and heads.

    Subclasses set `Config` (a dataclass: the schema of the config's `objective` section), `requires`
    (batch keys it reads), `default_transform`, `model_kinds` (the `model.kind`s it works with) and
    `default_model` (model keys it sets unless the config does), and implement `forward`.
    """

    Config: ClassVar[type]
    requires: ClassVar[frozenset[str]] = frozenset({"views"})
    default_transform: ClassVar[dict[str, Any]] = {"name": "mae"}
    model_kinds: ClassVar[frozenset[str]] = frozenset({"vit"})
    default_model: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__()
        self.cfg, self.max_steps = cfg, max_steps

    backbone: nn.Module  # the encoder that is exported and evaluated (a submodule or a property)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (EMA teachers, centres, prototypes)."""

    def extra_exports(self) -> dict[str, nn.Module]:
        """Modules exported next to `backbone.safetensors` when training ends, file name -> module with a
        `spec` (e.g. a text tower); loadable with `load_backbone`."""
        return {}

    def validate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Metrics on the validation split (`data.val_split`, eval transform, batches already on the device),
        which the trainer logs every `train.eval_every` steps and at the end; {} when the method has none.
        Report the sample count beside each metric (`val_n`)."""
        return {}

    @classmethod
    def variant(cls, section: Any) -> type[Objective]:
        """The class that trains the `objective` config section `section`: this one, or for a method with
        stages (G2SD) the class of the stage it names."""
        return cls

    def train(self, mode: bool = True) -> Objective:
        """Set the mode; teachers (modules with `frozen = True`: EMA copies, frozen teachers) stay in eval."""
        super().train(mode)
        for module in self.modules():
            if getattr(module, "frozen", False):
                module.eval()
        return self

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: with weight decay, and without it for biases, norms,
        1-D parameters and those a submodule lists in `no_weight_decay()` (timm's convention)."""
        exempt: set[str] = set()
        for prefix, module in self.named_modules():
            if hasattr(module, "no_weight_decay") and module is not self:
                exempt |= {f"{prefix}.{name}" for name in module.no_weight_decay()}
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith(".bias") or name in exempt else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay, "apply_wd_schedule": True},
            {"params": no_decay, "weight_decay": 0.0, "apply_wd_schedule": False},
        ]

    # -- parts a later run can rebuild from a checkpoint of this one (see modules.teacher.load_part) --
    parts: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def build_part(cls, cfg: DictConfig, part: str) -> nn.Module:
        """An untrained module of the shape this objective gives `part` (its state-dict prefix) under `cfg`."""
        raise BackboneLoadError(
            f"objective '{cfg.objective.name}' has no rebuildable part '{part}' "
            f"(it has: {', '.join(('backbone', *cls.parts))})"
        )


# -- masked modelling -----------------------------------------------------------------------------------


@dataclass
class MaskingConfig:
    """The keys every masked-modelling objective shares (`objective.*`)."""

    mask_ratio: float = ranged(0.75, "[0, 1)")
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class MaskedModelingConfig(MaskingConfig):
    """... and those that reconstruct pixels."""

    norm_pix_loss: bool = True


@dataclass
class MaskedStep:
    """idx_keep (B, 1 + K): kept sequence indices (0 = class token); mask (B, L): 1 on hidden patches;
    encoded: the visible tokens after the encoder (and its block taps); pred (B, L, P) decoder output;
    loss: reconstruction loss over the hidden patches."""

    idx_keep: Tensor
    mask: Tensor
    encoded: Encoded
    pred: Tensor
    loss: Tensor


class MaskedModelingObjective(Objective):
    """Mask -> encode the visible tokens -> decode -> reconstruct (He et al. 2022; Tong et al. 2022).

    Image backbones get a random token mask and per-patch normalised targets (`norm_pix_loss`, MAE's
    `forward_loss`); video backbones a tube mask (the same spatial positions hidden in every time slice)
    and tubelets standardised per channel (VideoMAE's target). The decoder's output size is the backbone's
    pixels per token, so the channel count comes from the model. Subclasses add teachers in
    `build_teachers()` (called between the encoder and the decoder, so every objective builds its modules
    in the same order) and reuse `reconstruct` in their `forward`. A subclass with `reconstructs = False`
    (G2SD) gets a decoder trunk (no final norm, no pixel head; read `decoder.hidden`) and no pixel loss.
    """

    parts = ("decoder",)
    reconstructs: ClassVar[bool] = True

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.backbone = build_backbone(cfg.model)
        self.video = len(self.backbone.grid_size) == 3
        self.build_teachers()
        self.decoder = self.build_decoder(self.backbone, o.decoder)
        if self.reconstructs:
            self.reconstruction = MaskedReconstructionLoss(norm_pix=o.norm_pix_loss and not self.video)
        self.mask_ratio = o.mask_ratio

    @classmethod
    def build_decoder(cls, backbone: nn.Module, cfg: DecoderConfig) -> PixelDecoder:
        if cls.reconstructs:
            return PixelDecoder.for_backbone(backbone, cfg)
        return PixelDecoder(backbone.grid_size, backbone.embed_dim, None, cfg)

    def build_teachers(self) -> None:
        """Teachers, adapters and heads of a distilling subclass (nothing for plain MAE)."""

    def inputs(self, batch: dict[str, Any]) -> Tensor:
        """The images (B, C, H, W) or clips (B, C, T, H, W) of the batch."""
        return batch["video"] if self.video else batch["views"][0]

    def sample_mask(self, x: Tensor) -> Tensor:
        """idx_keep (B, 1 + K): the class token and the visible patches, ascending."""
        if self.video:
            return tube_mask(len(x), self.backbone.grid_size, self.mask_ratio, device=x.device)
        idx_keep, _ = utils.random_token_mask((x.shape[0], self.backbone.num_patches + 1), self.mask_ratio, device=x.device)
        return idx_keep

    def targets(self, x: Tensor) -> Tensor:
        """(B, L, P) pixels per patch or tubelet; video targets standardised here, image ones in the loss."""
        pixels = self.backbone.pixel_targets(x)
        if self.video and self.cfg.objective.norm_pix_loss:
            return normalize_tubelets(pixels, self.backbone.in_chans)
        return pixels

    def reconstruct(self, x: Tensor, idx_keep: Tensor | None = None, taps: tuple[int, ...] | list[int] = ()) -> MaskedStep:
        """Encode the visible tokens of `x` (a fresh mask unless `idx_keep` is given), decode, score."""
        idx_keep = self.sample_mask(x) if idx_keep is None else idx_keep
        encoded = self.backbone.encode(x, idx_keep, taps=taps)
        pred = self.decoder(encoded.tokens, idx_keep)
        mask = mask_from_keep(idx_keep, self.backbone.num_patches)
        return MaskedStep(idx_keep, mask, encoded, pred, self.reconstruction(pred, self.targets(x), mask))

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        result = self.reconstruct(self.inputs(batch))
        return Output(result.loss, {"reconstruction": result.loss.detach()})

    @classmethod
    def build_part(cls, cfg: DictConfig, part: str) -> nn.Module:
        if part == "decoder":
            return cls.build_decoder(build_backbone(cfg.model, initialize=False), cfg.objective.decoder)
        return super().build_part(cfg, part)


# -- self-distillation ----------------------------------------------------------------------------------


@dataclass
class SelfDistillationConfig(DINOHeadConfig):
    """The keys every self-distillation objective shares (`objective.*`): DINO heads, temperatures, centring
    and the EMA momentum (cosine from `momentum_start` to `momentum_end`, per step)."""

    student_temp: float = ranged(0.1, "(0, inf)")
    teacher_temp: float = ranged(0.04, "(0, inf)")
    warmup_teacher_temp: float = ranged(0.04, "(0, inf)")
    warmup_teacher_temp_fraction: float = ranged(0.3, "[0, 1]")  # of all steps, linear from warmup_teacher_temp
    center_momentum: float = ranged(0.9, "[0, 1]")
    center_on: str = choice("logits", CENTER_ON)  # logits (DINO) | probabilities
    momentum_start: float = ranged(0.996, "[0, 1]")
    momentum_end: float = ranged(1.0, "[0, 1]")


class SelfDistillationObjective(Objective):
    """EMA teachers, DINO heads and teacher centring, updated once per optimizer step.

    Subclasses build students and make teachers with `self.ema.copy(student)`; every `TeacherCentering`
    among the objective's modules moves in `after_step`, right after the EMA update.
    """

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.ema = EMA(o.momentum_start, o.momentum_end, max_steps)
        self.temp_warmup_steps = int(o.warmup_teacher_temp_fraction * max_steps)

    def dino_head(self, in_dim: int) -> nn.Module:
        return dino_head(in_dim, self.cfg.objective)

    def centering(self) -> TeacherCentering:
        o = self.cfg.objective
        return TeacherCentering(o.output_dim, o.center_momentum, o.center_on)

    def teacher_temperature(self, step: int) -> float:
        o = self.cfg.objective
        return linear_warmup(step, self.temp_warmup_steps, o.warmup_teacher_temp, o.teacher_temp)

    def schedule_logs(self, step: int) -> dict[str, float]:
        return {"teacher_temp": self.teacher_temperature(step), "momentum": self.ema.momentum(step)}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.ema.update(step)
        for module in self.modules():
            if isinstance(module, TeacherCentering):
                module.update()


# -- supervised classification (fine-tuning) ------------------------------------------------------------


@dataclass
class ClassificationConfig:
    """The keys every classification objective shares (`objective.*`): MAE's fine-tuning recipe (official
    `main_finetune.py`, `util/lr_decay.py`): mixup 0.8 / cutmix 1.0 / smoothing 0.1 through timm's `Mixup`,
    layer-wise lr decay 0.75 (timm's `param_groups_layer_decay`), head at std 2e-5."""

    num_classes: int = MISSING
    pretrained: str | None = None  # encoder weights: a run dir, checkpoint, .safetensors or timm name; None: scratch
    pool: str = choice("avg", POOLS)  # avg (MAE's global pool) | cls
    layer_decay: float = ranged(0.75, "(0, 1]")  # lr of block i scaled by layer_decay^(depth - i); 1.0 switches it off
    label_smoothing: float = ranged(0.1, "[0, 1)")
    mixup: float = ranged(0.8, "[0, inf)")  # mixup alpha; 0 with cutmix 0 switches mixing off
    cutmix: float = ranged(1.0, "[0, inf)")  # cutmix alpha
    mix_prob: float = ranged(1.0, "[0, 1]")  # probability of mixing a batch
    switch_prob: float = ranged(0.5, "[0, 1]")  # probability of cutmix instead of mixup when both are on
    head_init_std: float = ranged(2e-5, "[0, inf)")


class ClassificationObjective(Objective):
    """A classifier on the (pretrained) encoder, trained on labels with MAE's fine-tuning recipe; validation
    top-1 on `data.val_split` (in metrics.csv as `val_top1`, with `val_n`). Subclasses add teachers in
    `build_teachers()` and a distillation token with `distillation_token = True` (G2SD's specific stage).

    The encoder's position table, fixed during masked pretraining, is learned here as in MAE's fine-tuning.
    Parameters outside the encoder (heads, distillation token) get the top layer's lr (scale 1).
    """

    requires = frozenset({"views", "label"})
    default_transform = {"name": "finetune"}
    parts = ("classifier",)
    distillation_token: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        if not cfg.data.val_split:
            raise ConfigError(f"objective '{o.name}' records validation top-1: set data.val_split (e.g. val)")
        self.classifier = self.build_classifier(cfg)
        if o.pretrained is not None:
            load_encoder_weights(self.backbone, o.pretrained)
        self.backbone.vit.pos_embed.requires_grad_(True)
        mixing = o.mixup > 0 or o.cutmix > 0
        if mixing and cfg.data.batch_size % 2:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size}: mixup/cutmix pair images, it must be even")
        self.mix = (
            Mixup(
                mixup_alpha=o.mixup, cutmix_alpha=o.cutmix, prob=o.mix_prob, switch_prob=o.switch_prob,
                label_smoothing=o.label_smoothing, num_classes=o.num_classes,
            )
            if mixing
            else None
        )
        if mixing:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif o.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(o.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.build_teachers()

    @classmethod
    def build_classifier(cls, cfg: DictConfig, initialize: bool = True) -> Classifier:
        o = cfg.objective
        backbone = build_backbone(cfg.model, initialize=initialize)
        return Classifier(backbone, o.num_classes, o.pool, cls.distillation_token, o.head_init_std)

    @property
    def backbone(self) -> nn.Module:
        return self.classifier.backbone

    def build_teachers(self) -> None:
        """Teachers and losses of a distilling subclass, built last (nothing for plain fine-tuning)."""

    def mixed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """images (B, C, H, W) and targets: labels (B,), or (B, classes) soft targets when mixing."""
        images, labels = batch["views"][0], batch["label"]
        return self.mix(images, labels) if self.mix is not None else (images, labels)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        images, targets = self.mixed(batch)
        loss = self.criterion(self.classifier(images), targets)
        return Output(loss, {"classification": loss.detach()})

    @torch.no_grad()
    def extra_exports(self) -> dict[str, nn.Module]:
        """Modules exported next to `backbone.safetensors` when training ends, file name -> module with a
        `spec` (e.g. a text tower); loadable with `load_backbone`."""
        return {}

    def validate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        was_training = self.training
        self.eval()
        correct = total = 0
        for batch in batches:
            predicted = self.classifier(batch["views"][0]).argmax(dim=-1)
            correct += int((predicted == batch["label"]).sum())
            total += len(predicted)
        self.train(was_training)
        return {"val_top1": 100.0 * correct / max(total, 1), "val_n": total}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """MAE's layer-wise lr decay (`util/lr_decay.py::param_groups_lrd`): the stem (class token, positions,
        patch embedding) is layer 0, block i layer i + 1, everything else (final norm, heads, distillation
        token) layer depth + 1; the lr of layer l is scaled by layer_decay^(depth + 1 - l). (timm's
        `param_groups_layer_decay` files the final norm with the last block, one layer short of MAE.) No
        weight decay for 1-D parameters, biases and `no_weight_decay()` names. Each group has `lr_scale`."""
        o = self.cfg.objective
        prefix = "classifier.backbone.encoder.vit."
        depth = self.backbone.depth
        exempt = {f"{prefix}{name}" for name in self.backbone.vit.no_weight_decay()}
        exempt |= {f"classifier.{name}" for name in self.classifier.no_weight_decay()}
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            layer = vit_layer_id(name.removeprefix(prefix), depth) if name.startswith(prefix) else depth + 1
            decays = param.ndim > 1 and not name.endswith(".bias") and name not in exempt
            group = groups.setdefault((layer, decays), {
                "params": [], "weight_decay": weight_decay if decays else 0.0, "apply_wd_schedule": decays,
                "lr_scale": o.layer_decay ** (depth + 1 - layer),
            })
            group["params"].append(param)
        return list(groups.values())

    @classmethod
    def build_part(cls, cfg: DictConfig, part: str) -> nn.Module:
        if part == "classifier":
            return cls.build_classifier(cfg, initialize=False)
        return super().build_part(cfg, part)


def vit_layer_id(name: str, depth: int) -> int:
    """MAE's `util/lr_decay.py::get_layer_id_for_vit` for a timm ViT parameter name."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def load_encoder_weights(backbone: nn.Module, source: str) -> None:
    """Copy the encoder of `source` (run dir, checkpoint, .safetensors, timm name) into `backbone`; the
    architectures must agree (the `model` section describes the encoder being fine-tuned)."""
    loaded = load_backbone(source)
    differ = {k: (v, backbone.spec.get(k)) for k, v in loaded.spec.items() if backbone.spec.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: {theirs} there, {ours} here" for k, (theirs, ours) in differ.items())
        raise ConfigError(f"objective.pretrained {source}: its encoder differs from model.* ({detail})")
    backbone.vit.load_state_dict(loaded.vit.state_dict())
