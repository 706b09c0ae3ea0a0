"""Video ViT backbone: tubelet embedding, fixed sin-cos positions, CLS token and timm blocks.

Tokens are in t-major order (patch p = t * H' * W' + h * W' + w) and `idx_keep` indices are in
sequence space as for the image ViT: 0 is the class token, patch p is index p + 1.

Positions (`pos_embed`): `sincos_3d` factorises time, height and width (our first release's table);
`sincos_1d` is VideoMAE's table over the flattened token index (Tong et al. 2022, official
`modeling_finetune.py::get_sinusoid_encoding_table`), which DISCOVR's released code also uses. Either
way the class token's row is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from lightly.models.utils import get_1d_sine_cosine_positional_embedding_from_positions, get_at_index
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ssl_distill.backbones.encoder import TokenEncoder
from ssl_distill.modules.tubelets import tubelet_pixels
from ssl_distill.schema import choice, ranged

POSITION_TABLES = ("sincos_3d", "sincos_1d")


@dataclass
class VideoViTConfig:
    """`model` section of `kind: video_vit`. `num_frames` None takes `data.options.num_frames`."""

    kind: str = "video_vit"
    img_size: int = ranged(112, "[1, inf)")
    num_frames: int | None = ranged(None, "[1, inf)")
    patch_size: int = ranged(16, "[1, inf)")
    tubelet_size: int = ranged(2, "[1, inf)")
    embed_dim: int = ranged(192, "[2, inf)")
    depth: int = ranged(12, "[1, inf)")
    num_heads: int = ranged(3, "[1, inf)")
    mlp_ratio: float = ranged(4.0, "(0, inf)")
    in_chans: int = ranged(3, "[1, inf)")
    qkv_bias: bool = True
    norm_eps: float = ranged(1e-6, "(0, inf)")
    pos_embed: str = choice("sincos_3d", POSITION_TABLES)  # sincos_1d: VideoMAE's (DISCOVR's default)
    drop_path_rate: float = ranged(0.0, "[0, 1)")


def sincos_1d(num_positions: int, dim: int) -> Tensor:
    """(N, D) VideoMAE's sinusoid table: entry (p, j) is p / 10000^(2 * (j // 2) / D), sine on even j,
    cosine on odd j (interleaved, unlike MAE's concatenated halves)."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponents = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = positions / torch.pow(10000.0, exponents)[None]
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.float()


def sincos_3d(embed_dim: int, grid_size: tuple[int, int, int]) -> Tensor:
    """(T' * H' * W', D) fixed positions: a quarter of the channels (rounded) encode time, the rest
    height and width in equal halves (MAE's 2-D sin-cos)."""
    spatial = 4 * (3 * embed_dim // 16)
    t, h, w = (np.arange(n, dtype=np.float32) for n in grid_size)
    tt, hh, ww = (g.reshape(-1) for g in np.meshgrid(t, h, w, indexing="ij"))
    parts = [
        get_1d_sine_cosine_positional_embedding_from_positions(embed_dim - spatial, tt),
        get_1d_sine_cosine_positional_embedding_from_positions(spatial // 2, hh),
        get_1d_sine_cosine_positional_embedding_from_positions(spatial // 2, ww),
    ]
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


class VideoViT(TokenEncoder):
    """ViT over (B, C, T, H, W) clips with Conv3d tubelets of `tubelet_size` x `patch_size`^2.

    Same interface as the image `ViT`; `spec` rebuilds it and its state dict is the export.
    """

    kind = "video_vit"

    def __init__(
        self,
        img_size: int = 112,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        pos_embed: str = "sincos_3d",
        initialize: bool = True,
    ) -> None:
        super().__init__()
        if pos_embed not in POSITION_TABLES:
            raise ValueError(f"model.pos_embed must be one of {POSITION_TABLES}, got '{pos_embed}'")
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size {img_size} and num_frames {num_frames} must be multiples of patch_size {patch_size} "
                f"and tubelet_size {tubelet_size}"
            )
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even for sin-cos positions, got {embed_dim}")
        self.config = dict(
            img_size=img_size,
            num_frames=num_frames,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            in_chans=in_chans,
            qkv_bias=qkv_bias,
            norm_eps=norm_eps,
            pos_embed=pos_embed,
        )
        self._grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        kernel = (tubelet_size, patch_size, patch_size)
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_patches = int(np.prod(self._grid))
        table = sincos_3d(embed_dim, self._grid) if pos_embed == "sincos_3d" else sincos_1d(num_patches, embed_dim)
        positions = torch.cat([torch.zeros(1, embed_dim), table])
        self.register_buffer("pos_embed", positions.unsqueeze(0), persistent=False)  # rebuilt from the spec
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=rate, norm_layer=norm)
            for rate in rates
        )
        self.norm = norm(embed_dim)
        if initialize:
            # MAE recipe, as for the image ViT: the tubelet conv is initialised like a linear layer
            nn.init.xavier_uniform_(self.patch_embed.weight.view(embed_dim, -1))
            nn.init.zeros_(self.patch_embed.bias)
            nn.init.normal_(self.cls_token, std=0.02)
            self.blocks.apply(init_weights)
            self.norm.apply(init_weights)

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.config}

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    @property
    def patch_size(self) -> int:
        return self.config["patch_size"]

    @property
    def tubelet_size(self) -> int:
        return self.config["tubelet_size"]

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """(T', H', W') tokens along time, height and width."""
        return self._grid

    @property
    def num_patches(self) -> int:
        return int(np.prod(self._grid))

    @property
    def in_chans(self) -> int:
        return self.config["in_chans"]

    @property
    def pixels_per_token(self) -> int:
        return self.tubelet_size * self.patch_size**2 * self.in_chans

    def pixel_targets(self, video: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, L, t * p * p * C) pixels per tubelet in token order (channel last)."""
        return tubelet_pixels(video, self.tubelet_size, self.patch_size)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def embed(self, video: Tensor, idx_keep: Tensor | None = None) -> Tensor:
        """(B, C, T, H, W) -> (B, 1 + K, D) tokens with positions; only `idx_keep` tokens when given."""
        expected = (
            self.config["in_chans"],
            self.config["num_frames"],
            self.config["img_size"],
            self.config["img_size"],
        )
        if tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"VideoViT expects (B, C, T, H, W) = (B, {', '.join(map(str, expected))}), got {tuple(video.shape)}"
            )
        patches = self.patch_embed(video).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(video), -1, -1), patches], dim=1) + self.pos_embed
        return tokens if idx_keep is None else get_at_index(tokens, idx_keep)

    def transformer_blocks(self) -> nn.ModuleList:
        return self.blocks

    def final_norm(self) -> nn.Module:
        return self.norm
