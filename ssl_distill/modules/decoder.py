"""MAE-style decoder over lightly's MaskedVisionTransformerDecoderTIMM: visible latents in, one
prediction per patch (image) or tubelet (video) out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from torch import Tensor, nn

from ssl_distill.backbones.video_vit import sincos_1d, sincos_3d
from ssl_distill.schema import ranged

DECODER_POSITIONS = ("sincos", "sincos_1d")


@dataclass
class DecoderConfig:
    """The light decoder of a masked-modelling objective (`objective.decoder`)."""

    dim: int = ranged(128, "[1, inf)")
    depth: int = ranged(2, "[1, inf)")
    heads: int = ranged(4, "[1, inf)")


def decoder_positions(grid_size: Sequence[int], dim: int, kind: str = "sincos", num_prefix_tokens: int = 1) -> Tensor:
    """(1, P + L, dim) fixed positions, P zero rows for prefix (class) tokens first.

    `sincos`: MAE's 2-D sin-cos for a square (H', W') grid, the video ViT's 3-D sin-cos for a (T', H', W')
    grid. `sincos_1d`: rows 1..L of VideoMAE's 1-D table over L + 1 positions, the table DISCOVR's
    decoder indexes past its (absent) class token (official `modeling_pretrain.py`, `pos_embed[:, 1:]`).
    """
    if kind not in DECODER_POSITIONS:
        raise ValueError(f"decoder positions must be one of {DECODER_POSITIONS}, got '{kind}'")
    length = math.prod(grid_size)
    if kind == "sincos_1d":
        table = sincos_1d(length + 1, dim)[1:]
    elif len(grid_size) == 3:
        table = sincos_3d(dim, tuple(grid_size))
    elif len(grid_size) == 2 and grid_size[0] == grid_size[1]:
        table = torch.from_numpy(utils.get_2d_sine_cosine_positional_embedding(dim, grid_size[0], num_prefix_tokens=0))
    else:
        raise ValueError(f"grid_size must be a square (H', W') or a (T', H', W') grid, got {tuple(grid_size)}")
    return torch.cat([torch.zeros(num_prefix_tokens, dim), table.float()]).unsqueeze(0)


class PixelDecoder(nn.Module):
    """Linear embed of the visible latents, mask tokens at hidden positions, fixed positions, transformer
    blocks + norm (lightly), then a linear head to `out_dim` values per token: the pixels of a patch
    (MAE, p * p * C) or a tubelet (VideoMAE, t * p * p * C), or features (DISCOVR's clustering branch).

    With `num_prefix_tokens=1` the encoder's class token is decoded too (MAE, DMAE); with 0 the decoder
    sees patch tokens only (VideoMAE's and DISCOVR's decoders). With `out_dim=None` it is a trunk without
    final norm and head, read through `hidden` (G2SD's student decoder feeds its own head)."""

    def __init__(
        self,
        grid_size: Sequence[int],
        in_dim: int,
        out_dim: int | None,
        cfg: DecoderConfig,
        num_prefix_tokens: int = 1,
        embed_bias: bool = True,
        positions: str = "sincos",
    ) -> None:
        super().__init__()
        num_patches = math.prod(grid_size)
        self.embed = nn.Linear(in_dim, cfg.dim, bias=embed_bias)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=num_patches,
            embed_dim=cfg.dim,
            depth=cfg.depth,
            num_heads=cfg.heads,
            num_prefix_tokens=num_prefix_tokens,
            initialize_weights=False,
        )
        # lightly's own initialisation, with positions for any grid (its table is 2-D only)
        nn.init.normal_(self.decoder.mask_token, std=0.02)
        self.decoder.pos_embed.data.copy_(decoder_positions(grid_size, cfg.dim, positions, num_prefix_tokens))
        self.decoder.apply(init_weights)
        if out_dim is None:  # a trunk: no final norm, no head; `hidden` is its output
            self.decoder.norm = nn.Identity()
        self.predict = nn.Linear(cfg.dim, out_dim) if out_dim is not None else None
        self.num_prefix_tokens = num_prefix_tokens
        self.sequence_length = num_patches + num_prefix_tokens

    @classmethod
    def for_backbone(cls, backbone: nn.Module, cfg: DecoderConfig) -> PixelDecoder:
        """The pixel decoder of a masked autoencoder: one prediction of `backbone.pixels_per_token` values
        per patch or tubelet, the class token decoded along (MAE)."""
        return cls(backbone.grid_size, backbone.embed_dim, backbone.pixels_per_token, cfg)

    def hidden(self, latent: Tensor, idx_keep: Tensor, blocks: int | None = None) -> Tensor:
        """latent (B, P + K, D): final-norm encoder output at sequence indices idx_keep (B, 1 + K) (the class
        token first, dropped from `latent` when the decoder has no prefix token: P = 0) -> (B, P + L, dim) the
        residual stream after the first `blocks` blocks (all when None), before the final norm, every token
        (prefix tokens first, then the patches in order, mask tokens at the hidden ones)."""
        depth = len(self.decoder.blocks)
        if blocks is not None and not 1 <= blocks <= depth:
            raise ValueError(f"decoder blocks must lie in [1, {depth}], got {blocks}")
        embedded = self.embed(latent)
        if self.num_prefix_tokens == 0:
            idx_keep = idx_keep[:, 1:] - 1
        tokens = utils.repeat_token(self.decoder.mask_token, (latent.shape[0], self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, embedded.type_as(tokens))
        return self.decoder.blocks[:blocks](self.decoder.preprocess(tokens))

    def forward(self, latent: Tensor, idx_keep: Tensor) -> Tensor:
        """latent (B, P + K, D) at idx_keep (B, 1 + K) as in `hidden` -> predictions (B, L, out_dim) for
        every patch, in patch order."""
        if self.predict is None:
            raise RuntimeError("this decoder is a trunk without a head (out_dim=None): read `hidden`")
        return self.predict(self.decoder.norm(self.hidden(latent, idx_keep)))[:, self.num_prefix_tokens :]
