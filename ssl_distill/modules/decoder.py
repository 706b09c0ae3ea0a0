"""MAE pixel decoder over lightly's MaskedVisionTransformerDecoderTIMM: visible latents in,
predictions for every patch out."""

from __future__ import annotations

from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM
from torch import Tensor, nn


class PixelDecoder(nn.Module):
    """Linear embed of the visible latents, mask tokens at hidden positions, fixed sin-cos positions,
    transformer blocks + norm (lightly), then a linear head to p * p * C pixel values per patch."""

    def __init__(
        self, num_patches: int, patch_size: int, in_dim: int, dim: int = 128, depth: int = 2, heads: int = 4, in_chans: int = 3
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(num_patches=num_patches, embed_dim=dim, depth=depth, num_heads=heads)
        self.predict = nn.Linear(dim, patch_size**2 * in_chans)
        self.sequence_length = num_patches + 1

    def forward(self, latent: Tensor, idx_keep: Tensor) -> Tensor:
        """latent (B, 1 + K, D): final-norm encoder output at sequence indices idx_keep (B, 1 + K)
        -> predictions (B, L, p * p * C) for every patch, in patch order."""
        embedded = self.embed(latent)
        tokens = utils.repeat_token(self.decoder.mask_token, (latent.shape[0], self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, embedded.type_as(tokens))
        return self.predict(self.decoder(tokens))[:, 1:]
