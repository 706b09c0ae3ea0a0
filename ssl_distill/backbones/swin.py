"""Swin Transformer backbone (`model.kind: swin`): any timm SwinTransformer by name with size overrides.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021; timm's
`timm/models/swin_transformer.py`. CMD (Bi et al. 2025) trains a Swin-T, as EsViT does. A Swin has no
class token: the image feature is the average of the final-stage tokens (timm's `global_pool='avg'`,
EsViT's `avgpool`), and the patch tokens are the final feature map, flattened row by row.

It offers what objectives and evaluation use from a backbone: `embed_dim` (the output token width,
timm's `num_features`), `grid_size` (the final map at `img_size`), `features`, `forward`,
`forward_features`, `spec` and `no_weight_decay`. Masked-modelling objectives do not accept it (they
drop tokens, which a windowed encoder cannot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

from ssl_distill.errors import ConfigError
from ssl_distill.registry import BACKBONES, closest
from ssl_distill.schema import ranged


@dataclass
class SwinConfig:
    """`model` section of `kind: swin`; None keeps timm's value for the named model. `embed_dim` is the
    first stage's width (timm's meaning); the output width is embed_dim * 2^(stages - 1)."""

    kind: str = "swin"
    name: str = "swin_tiny_patch4_window7_224"
    img_size: int = ranged(224, "[1, inf)")
    patch_size: int | None = None
    embed_dim: int | None = None
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    window_size: int | None = None
    mlp_ratio: float | None = None
    in_chans: int | None = None
    drop_path_rate: float = ranged(0.0, "[0, 1)")


@BACKBONES.register("swin", config=SwinConfig)
class Swin(nn.Module):
    """A timm SwinTransformer by name with size overrides; `spec` rebuilds it (exports, checkpoints)."""

    kind = "swin"
    num_prefix_tokens = 0

    def __init__(
        self,
        name: str = "swin_tiny_patch4_window7_224",
        img_size: int = 224,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depths: list[int] | tuple[int, ...] | None = None,
        num_heads: list[int] | tuple[int, ...] | None = None,
        window_size: int | None = None,
        mlp_ratio: float | None = None,
        in_chans: int | None = None,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
        initialize: bool = True,  # timm's own init either way (weights are loaded over it when False)
    ) -> None:
        super().__init__()
        sizes = dict(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depths=None if depths is None else [int(d) for d in depths],
            num_heads=None if num_heads is None else [int(h) for h in num_heads],
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            in_chans=in_chans,
            dynamic_img_size=dynamic_img_size or None,
        )
        self.timm_kwargs: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
        if name not in timm.list_models("swin*"):
            raise ConfigError(f"model.name '{name}' is not a timm Swin model{closest(name, timm.list_models('swin*'))}")
        if depths is not None and num_heads is not None and len(depths) != len(num_heads):
            raise ConfigError(f"model.depths {list(depths)} and model.num_heads {list(num_heads)} differ in length")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.timm_kwargs.items()}
        swin = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **kwargs)
        if not isinstance(swin, SwinTransformer):
            raise ConfigError(f"model.name '{name}' is a {type(swin).__name__}, not a timm SwinTransformer")
        self.name = name
        self.swin = swin

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **self.timm_kwargs}

    @property
    def embed_dim(self) -> int:
        """Width of the output tokens (timm's `num_features`), what heads and probes see."""
        return int(self.swin.num_features)

    @property
    def num_features(self) -> int:
        return self.embed_dim

    @property
    def in_chans(self) -> int:
        return int(self.swin.patch_embed.proj.in_channels)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H', W') of the final feature map at `img_size`."""
        return tuple(int(s) for s in self.swin.layers[-1].output_resolution)  # type: ignore[return-value]

    def no_weight_decay(self) -> set[str]:
        return {f"swin.{name}" for name in self.swin.no_weight_decay()}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, D) final-stage tokens after the last norm, row by row (no class token)."""
        return self.swin.forward_features(x).flatten(1, 2)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> average-pooled feature (B, D) and patch tokens (B, L, D)."""
        tokens = self.forward_features(x)
        return tokens.mean(1), tokens

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) average-pooled feature (timm's pre-logits output)."""
        return self.forward_features(x).mean(1)
