"""Image ViT backbone: any timm VisionTransformer, with token dropping and pre-norm block taps.

Token dropping goes through lightly's `MaskedVisionTransformerTIMM.preprocess`, the blocks are timm's,
so there is one ViT implementation. Indices in `idx_keep` are in sequence space: 0 is the class
token, patch p is index p + 1 (lightly's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from lightly.models.modules import MaskedVisionTransformerTIMM
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ssl_distill.registry import closest


@dataclass
class Encoded:
    """tokens: (B, 1 + K, D) after the last block run (final norm applied only for a full run);
    taps: block index (0-based) -> (B, 1 + K, D) output of that block, before any norm."""

    tokens: Tensor
    taps: dict[int, Tensor]


class ViT(nn.Module):
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
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
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
            dynamic_img_size=dynamic_img_size or None,
        )
        self.timm_kwargs: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
        if name not in timm.list_models():
            raise ValueError(f"model.name '{name}' is not a timm model{closest(name, timm.list_models('vit*'))}")
        vit = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **self.timm_kwargs)
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"model.name '{name}' is a {type(vit).__name__}, not a timm VisionTransformer")
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
    def depth(self) -> int:
        return len(self.vit.blocks)

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
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.vit.{name}" for name in self.vit.no_weight_decay()} | {"encoder.mask_token"}

    def embed(self, images: Tensor, idx_keep: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, 1 + K, D) tokens with positions; only `idx_keep` tokens when given."""
        return self.vit.norm_pre(self.encoder.preprocess(images, idx_keep=idx_keep))

    def run_blocks(self, x: Tensor, taps: Sequence[int] = (), stop: int | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        """Run blocks [0, stop) and collect the outputs of the blocks in `taps`."""
        stop = self.depth if stop is None else stop
        if any(not 0 <= t < stop for t in taps):
            raise ValueError(f"taps {list(taps)} must lie in [0, {stop}) for a {self.depth}-block ViT")
        collected = {}
        for index, block in enumerate(self.vit.blocks[:stop]):
            x = block(x)
            if index in taps:
                collected[index] = x
        return x, collected

    def encode(
        self,
        images: Tensor,
        idx_keep: Tensor | None = None,
        taps: Sequence[int] = (),
        stop: int | None = None,
    ) -> Encoded:
        """Encode (visible) tokens; with `stop` the run ends after block stop-1 and skips the final norm."""
        x, collected = self.run_blocks(self.embed(images, idx_keep), taps, stop)
        if stop is None or stop == self.depth:
            x = self.vit.norm(x)
        return Encoded(x, collected)

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + L, D): all tokens after the final norm (timm's forward_features)."""
        return self.encode(images).tokens

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) class-token feature (timm's pre-logits output)."""
        return self.forward_features(images)[:, 0]

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> class token (B, D) and patch tokens (B, L, D), both after the final norm."""
        tokens = self.forward_features(images)
        return tokens[:, 0], tokens[:, self.num_prefix_tokens :]


def mask_from_keep(idx_keep: Tensor, num_patches: int, num_prefix_tokens: int = 1) -> Tensor:
    """Sequence-space kept indices (B, K) -> patch mask (B, L) with 1 where a patch is hidden."""
    mask = torch.ones(idx_keep.shape[0], num_patches, device=idx_keep.device)
    patches = idx_keep[:, num_prefix_tokens:] - num_prefix_tokens if num_prefix_tokens else idx_keep
    return mask.scatter_(1, patches, 0.0)
