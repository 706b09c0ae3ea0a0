"""Image ViT backbone: any timm VisionTransformer, with token dropping and pre-norm block taps.

Token dropping goes through lightly's `MaskedVisionTransformerTIMM.preprocess`, the blocks are timm's,
so there is one ViT implementation. Indices in `idx_keep` are in sequence space: 0 is the class
token, patch p is index p + 1 (lightly's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerTIMM
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ssl_distill.backbones.encoder import TokenEncoder
from ssl_distill.errors import ConfigError
from ssl_distill.registry import closest
from ssl_distill.schema import ranged


@dataclass
class ViTConfig:
    """`model` section of `kind: vit`: a timm ViT by name; None keeps timm's value for that size."""

    kind: str = "vit"
    name: str = "vit_tiny_patch16_224"
    img_size: int = ranged(32, "[1, inf)")
    patch_size: int | None = ranged(4, "[1, inf)")
    embed_dim: int | None = ranged(None, "[1, inf)")
    depth: int | None = ranged(None, "[1, inf)")
    num_heads: int | None = ranged(None, "[1, inf)")
    mlp_ratio: float | None = ranged(None, "(0, inf)")
    in_chans: int | None = ranged(None, "[1, inf)")  # None: timm's 3
    drop_path_rate: float = ranged(0.0, "[0, 1)")


class ViT(TokenEncoder):
    """A timm ViT by name with size overrides (None keeps timm's value).

    `spec` holds everything needed to rebuild it (it goes into exports and checkpoints).
    """

    kind = "vit"

    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        img_size: int = 224,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        in_chans: int | None = None,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
        reg_tokens: int | None = None,
        initialize: bool = True,
    ) -> None:
        super().__init__()
        sizes = dict(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            in_chans=in_chans,
            dynamic_img_size=dynamic_img_size or None,
            reg_tokens=reg_tokens or None,  # timm's register tokens: prefix tokens after the class token
        )
        self.timm_kwargs: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
        if name not in timm.list_models():
            raise ConfigError(f"model.name '{name}' is not a timm model{closest(name, timm.list_models('vit*'))}")
        try:
            vit = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **self.timm_kwargs)
        except TypeError:  # a CNN (or another family) takes no ViT sizes such as patch_size
            vit = None
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(
                f"model.name '{name}' is not a timm VisionTransformer; a CNN is model.kind=cnn (for objectives "
                "that do not mask tokens, such as dino)"
            )
        self.name = name
        # MAE recipe for from-scratch training: xavier init and a fixed 2-D sin-cos position embedding.
        self.encoder = MaskedVisionTransformerTIMM(
            vit,
            weight_initialization="" if initialize else "skip",
            pos_embed_initialization="sincos" if initialize else "skip",
        )
        self.encoder.mask_token.requires_grad_(False)  # tokens are dropped, never replaced by a mask token

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **self.timm_kwargs}

    @property
    def vit(self) -> VisionTransformer:
        return self.encoder.vit

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        """The class token plus any register tokens (TIPS's second class token is timm's register)."""
        return int(self.vit.num_prefix_tokens)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        return int(self.vit.patch_embed.num_patches)

    @property
    def in_chans(self) -> int:
        return int(self.vit.patch_embed.proj.in_channels)

    @property
    def pixels_per_token(self) -> int:
        return self.patch_size**2 * self.in_chans

    def pixel_targets(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, p * p * C) pixels per patch (MAE's order: channel last)."""
        return utils.patchify(images, self.patch_size)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.vit.{name}" for name in self.vit.no_weight_decay()} | {"encoder.mask_token"}

    def embed(self, images: Tensor, idx_keep: Tensor | None = None, patch_mask: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, P + K, D) tokens with positions, P prefix tokens first; only `idx_keep` tokens
        when given. `patch_mask` (B, L) bool replaces those patches by the mask token before the positions
        are added (iBOT; the mask token is trainable only where an objective makes it so)."""
        mask = None
        if patch_mask is not None:
            prefix = patch_mask.new_zeros(patch_mask.shape[0], self.num_prefix_tokens)
            mask = torch.cat([prefix, patch_mask.bool()], dim=1)
        return self.vit.norm_pre(self.encoder.preprocess(images, idx_keep=idx_keep, mask=mask))

    @property
    def representation_names(self) -> tuple[str, ...]:
        return ("cls2",) if self.num_prefix_tokens >= 2 else ()

    def representations(self, images: Tensor) -> dict[str, Tensor]:
        """Named (B, D) features beyond `features`: 'cls2', the second prefix token (TIPS's second class
        token), when the ViT has one."""
        if self.num_prefix_tokens < 2:
            return {}
        return {"cls2": self.forward_features(images)[:, 1]}

    def transformer_blocks(self) -> nn.Sequential:
        return self.vit.blocks

    def final_norm(self) -> nn.Module:
        return self.vit.norm


def mask_from_keep(idx_keep: Tensor, num_patches: int, num_prefix_tokens: int = 1) -> Tensor:
    """Sequence-space kept indices (B, K) -> patch mask (B, L) with 1 where a patch is hidden."""
    mask = torch.ones(idx_keep.shape[0], num_patches, device=idx_keep.device)
    patches = idx_keep[:, num_prefix_tokens:] - num_prefix_tokens if num_prefix_tokens else idx_keep
    return mask.scatter_(1, patches, 0.0)
