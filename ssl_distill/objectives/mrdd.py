"""MRDD (Ke et al., CVPR 2024, "Rethinking Multi-view Representation Learning via Distilled
Disentangling"), after the official `src/models/{mrdd,consistency_models,specificity_models,
mi_estimators}.py` and `src/train_{consistency,disentangle}.py`. See docs/methods/mrdd.md.

`objective.stage: 1` — masked cross-view prediction: every view gets its own random patch mask (exactly
int(r L) patches zeroed in pixel space), one shared conv encoder reads every masked view, the V flat
latents are concatenated into a Gaussian c ~ N(mu, sigma^2) with a N(0, I) prior, and one decoder per
view reconstructs every *unmasked* view from c. Exported: the consistency encoder (`mrdd` backbone).

`objective.stage: 2` — distilled disentangling: the stage-1 encoder (`objective.consistency`, a run
directory or checkpoint) is frozen and gives c; per view a VAE encodes s_v, its decoder reconstructs the
view from [s_v, c], and a CLUB estimate of I(s_v; c) is minimised so that s_v carries what c lacks. The
CLUB network learns q(c | s_v) from s_v.detach() in the same step; the bound reaches the encoder through
q with its parameters detached, so each term trains only its own side. `stage2_mode: released` runs the
released code instead (only the estimator's likelihood loss, on s_v not detached; the frozen encoder in
train mode, sampling c). Exported: consistency + specific encoders (`mrdd` backbone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.func import functional_call

from ssl_distill.backbones import BackboneLoadError, MRDDEncoder
from ssl_distill.backbones.conv_vae import ConvDecoder
from ssl_distill.errors import ConfigError
from ssl_distill.losses import (
    MultiViewVAELoss,
    club_learning_loss,
    club_upper_bound,
    gaussian_kl,
    reparameterize,
)
from ssl_distill.modules.club import ConditionalGaussian
from ssl_distill.modules.masking import random_patch_mask, zero_patches
from ssl_distill.modules.teacher import load_part
from ssl_distill.objectives.base import Objective, Output
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import choice, ranged

STAGE2_MODES = ("paper", "released")


@dataclass
class MRDDConfig:
    """Defaults: the EdgeMNIST YAML of the official code, weights per sample (see docs/methods/mrdd.md)."""

    name: str = "mrdd"
    stage: int = choice(1, (1, 2))
    # stage 1: masked cross-view prediction
    c_dim: int = ranged(10, "[1, inf)")
    patch_size: int = ranged(2, "[1, inf)")
    mask_ratio: float = ranged(0.7, "[0, 1)")
    recon_weight: float = ranged(1.0, "[0, inf)")
    kl_weight: float = ranged(0.00390625, "[0, inf)")  # 2 * kld_weight / 512: the release's per-sample beta at its batch of 512
    loss_reduction: str = choice("per_sample", ("per_sample", "released"))  # released: SSE summed over the batch, KL averaged
    # stage 2: distilled disentangling
    consistency: str | None = None  # the stage-1 run directory or checkpoint
    v_dim: int = ranged(10, "[1, inf)")
    specific_recon_weight: float = ranged(1.0, "[0, inf)")
    specific_kl_weight: float = ranged(0.000244140625, "[0, inf)")  # 0.25 / 1024: the release's per-sample beta at its batch of 1024
    mi_weight: float = ranged(1.0, "[0, inf)")  # lambda of the CLUB bound (official disent.lam)
    club_hidden: int = ranged(100, "[1, inf)")
    best_view: int = ranged(0, "[0, inf)")
    stage2_mode: str = choice("paper", STAGE2_MODES)  # docs/methods/mrdd.md

@OBJECTIVES.register("mrdd")
class MRDD(Objective):
    """batch['views']: V aligned views (B, C, H, W), named in batch['view_names']."""

    Config = MRDDConfig
    requires = frozenset({"views", "view_names"})
    model_kinds = frozenset({"conv_vae"})
    default_model = {"kind": "conv_vae"}

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.stage = o.stage
        if self.stage == 1:
            self._build_stage1(cfg)
        else:
            self._build_stage2(cfg)

    # -- stage 1 --------------------------------------------------------------------------------------------
    def _build_stage1(self, cfg: DictConfig) -> None:
        o, m = cfg.objective, cfg.model
        if m.img_size % o.patch_size:
            raise ConfigError(f"model.img_size {m.img_size} is not a multiple of objective.patch_size {o.patch_size}")
        self.backbone = MRDDEncoder({**OmegaConf.to_container(m, resolve=True), "latent_dim": o.c_dim})
        encoder = self.backbone.consistency
        self.to_decoder_input = nn.Linear(o.c_dim, encoder.flat_dim)  # shared by the view decoders (official)
        self.decoders = nn.ModuleList(_decoder(m, encoder.grid) for _ in range(m.num_views))
        self.vae_loss = MultiViewVAELoss(o.recon_weight, o.kl_weight, o.loss_reduction)

    def _stage1(self, views: list[Tensor]) -> Output:
        o = self.cfg.objective
        patches = (views[0].shape[-1] // o.patch_size) ** 2
        masked = [zero_patches(x, random_patch_mask(len(x), patches, o.mask_ratio, device=x.device), o.patch_size) for x in views]
        mu, logvar = self.backbone.consistency(masked)
        z = self.to_decoder_input(reparameterize(mu, logvar))
        recons = [decoder(z) for decoder in self.decoders]
        loss, reconstruction, kl = self.vae_loss(recons, views, mu, logvar)
        return Output(loss, {"reconstruction": reconstruction, "kl": kl})

    # -- stage 2 --------------------------------------------------------------------------------------------
    def _build_stage2(self, cfg: DictConfig) -> None:
        o, m = cfg.objective, cfg.model
        if o.consistency is None:
            raise ConfigError("objective.consistency: stage 2 needs the stage-1 run directory or checkpoint")
        stage1 = load_part(o.consistency, "backbone")
        if not isinstance(stage1, MRDDEncoder) or len(stage1.specific):
            raise BackboneLoadError(f"objective.consistency={o.consistency}: not a stage-1 MRDD run (its backbone is {stage1.spec['kind']})")
        consistency = stage1.consistency.spec
        if consistency["num_views"] != m.num_views:
            raise ConfigError(
                f"model.num_views={m.num_views} but the stage-1 run {o.consistency} encodes {consistency['num_views']} views"
            )
        specific = [{**OmegaConf.to_container(m, resolve=True), "num_views": 1, "latent_dim": o.v_dim}] * m.num_views
        self.backbone = MRDDEncoder(consistency, specific, o.best_view)
        self.backbone.consistency.load_state_dict(stage1.consistency.state_dict())
        self.backbone.consistency.requires_grad_(False)
        self.backbone.consistency.frozen = o.stage2_mode == "paper"  # the release leaves it in train mode
        self.c_dim = consistency["latent_dim"]
        flat, grid = self.backbone.specific[0].flat_dim, self.backbone.specific[0].grid
        self.to_decoder_input = nn.ModuleList(nn.Linear(o.v_dim + self.c_dim, flat) for _ in range(m.num_views))
        self.decoders = nn.ModuleList(_decoder(m, grid) for _ in range(m.num_views))
        self.club = nn.ModuleList(ConditionalGaussian(o.v_dim, self.c_dim, o.club_hidden) for _ in range(m.num_views))

    def _consistent(self, views: list[Tensor]) -> Tensor:
        with torch.no_grad():
            mu, logvar = self.backbone.consistency(views)
        return mu if self.cfg.objective.stage2_mode == "paper" else reparameterize(mu, logvar)

    def _stage2(self, views: list[Tensor]) -> Output:
        o = self.cfg.objective
        c = self._consistent(views)
        loss, logs = 0.0, {"reconstruction": 0.0, "kl": 0.0, "mi": 0.0, "club_nll": 0.0}
        for v, x in enumerate(views):
            mu, logvar = self.backbone.specific[v]([x])
            s = reparameterize(mu, logvar)
            if o.stage2_mode == "released":  # official MRDD.get_loss: lam * mi_est.learning_loss(s, c), s not detached
                nll = club_learning_loss(*self.club[v](s), c)
                loss = loss + o.mi_weight * nll
                logs["club_nll"] += nll.detach()
                continue
            recon = self.decoders[v](self.to_decoder_input[v](torch.cat([s, c], dim=1)))
            sse = (recon.float() - x.float()).pow(2).flatten(1).sum(1).mean()
            kl = gaussian_kl(mu, logvar).mean()
            frozen_q = {name: p.detach() for name, p in self.club[v].named_parameters()}
            mi = club_upper_bound(*functional_call(self.club[v], frozen_q, (s,)), c)
            nll = club_learning_loss(*self.club[v](s.detach()), c)
            loss = loss + o.specific_recon_weight * sse + o.specific_kl_weight * kl + o.mi_weight * mi + nll
            for key, value in (("reconstruction", sse), ("kl", kl), ("mi", mi), ("club_nll", nll)):
                logs[key] += value.detach()
        if o.stage2_mode == "released":
            logs = {"club_nll": logs["club_nll"]}
        return Output(loss, logs)

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        views = list(batch["views"])
        if len(views) != self.cfg.model.num_views:
            names = [names[0] for names in batch["view_names"]]
            raise ValueError(f"model.num_views={self.cfg.model.num_views}, but the batch has {len(views)} views {names}")
        return self._stage1(views) if self.stage == 1 else self._stage2(views)


def _decoder(model: DictConfig, grid: int) -> ConvDecoder:
    return ConvDecoder(model.in_chans, model.hidden_dim, model.ch_mult, model.num_res_blocks, model.latent_ch, grid)

