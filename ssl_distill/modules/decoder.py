"""MAE-style decoder over lightly's MaskedVisionTransformerDecoderTIMM: visible latents in, one
prediction per patch (image) or tubelet (video) out."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from torch import Tensor, nn

from ssl_distill.backbones.video_vit import sincos_3d


def sincos_positions(grid_size: Sequence[int], dim: int) -> Tensor:
    """(1, 1 + L, dim) fixed positions, a zero row for the class token first: MAE's 2-D sin-cos for
    a square (H', W') grid, the video ViT's 3-D sin-cos for a (T', H', W') grid."""
    if len(grid_size) == 3:
        table = sincos_3d(dim, tuple(grid_size))
    elif len(grid_size) == 2 and grid_size[0] == grid_size[1]:
        table = torch.from_numpy(utils.get_2d_sine_cosine_positional_embedding(dim, grid_size[0], num_prefix_tokens=0))
    else:
        raise ValueError(f"grid_size must be a square (H', W') or a (T', H', W') grid, got {tuple(grid_size)}")
    return torch.cat([torch.zeros(1, dim), table.float()]).unsqueeze(0)


class PixelDecoder(nn.Module):
    """Linear embed of the visible latents, mask tokens at hidden positions, fixed sin-cos positions,
    transformer blocks + norm (lightly), then a linear head to `out_dim` values per token: the
    pixels of a patch (MAE, p * p * C) or a tubelet (VideoMAE, t * p * p * C), or features
    (DISCOVR's clustering branch)."""

    def __init__(
        self, grid_size: Sequence[int], in_dim: int, out_dim: int, dim: int = 128, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        num_patches = math.prod(grid_size)
        self.embed = nn.Linear(in_dim, dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=num_patches, embed_dim=dim, depth=depth, num_heads=heads, initialize_weights=False
        )
        # lightly's own initialisation, with positions for any grid (its table is 2-D only)
        nn.init.normal_(self.decoder.mask_token, std=0.02)
        self.decoder.pos_embed.data.copy_(sincos_positions(grid_size, dim))
        self.decoder.apply(init_weights)
        self.predict = nn.Linear(dim, out_dim)
        self.sequence_length = num_patches + 1

    def forward(self, latent: Tensor, idx_keep: Tensor) -> Tensor:
        """latent (B, 1 + K, D): final-norm encoder output at sequence indices idx_keep (B, 1 + K)
        -> predictions (B, L, out_dim) for every patch, in patch order."""
        embedded = self.embed(latent)
        tokens = utils.repeat_token(self.decoder.mask_token, (latent.shape[0], self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, embedded.type_as(tokens))
        return self.predict(self.decoder(tokens))[:, 1:]
