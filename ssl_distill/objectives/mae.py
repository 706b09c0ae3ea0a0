"""MAE (He et al., CVPR 2022): reconstruct hidden patches from 25% visible ones. It also trains the
teachers that DMAE, G2SD and Hybrid Distillation distill from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightly.models import utils
from omegaconf import DictConfig

from ssl_distill.backbones import mask_from_keep
from ssl_distill.losses import MaskedReconstructionLoss
from ssl_distill.modules.decoder import PixelDecoder
from ssl_distill.objectives.base import Objective, Output, build_vit
from ssl_distill.registry import OBJECTIVES


@dataclass
class MAEConfig:
    name: str = "mae"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4


@OBJECTIVES.register("mae")
class MAE(Objective):
    """batch['views'][0]: (B, C, H, W) -> masked-patch pixel loss."""

    Config = MAEConfig

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.backbone = build_vit(cfg.model)
        self.decoder = PixelDecoder(
            self.backbone.grid_size, self.backbone.embed_dim, self.backbone.patch_size**2 * 3,
            o.decoder_dim, o.decoder_depth, o.decoder_heads,
        )
        self.reconstruction = MaskedReconstructionLoss(norm_pix=o.norm_pix_loss)
        self.mask_ratio = o.mask_ratio

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        images = batch["views"][0]
        idx_keep, _ = utils.random_token_mask((images.shape[0], self.backbone.num_patches + 1), self.mask_ratio, device=images.device)
        latent = self.backbone.encode(images, idx_keep).tokens
        pred = self.decoder(latent, idx_keep)
        mask = mask_from_keep(idx_keep, self.backbone.num_patches)
        loss = self.reconstruction(pred, utils.patchify(images, self.backbone.patch_size), mask)
        return Output(loss, {"reconstruction": loss.detach()})
