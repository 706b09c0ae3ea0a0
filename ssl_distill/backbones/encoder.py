"""What every backbone shares: run blocks with taps and early stop, encode visible tokens, pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class Encoded:
    """tokens: (B, 1 + K, D) after the last block run (final norm applied only for a full run);
    taps: block index (0-based) -> (B, 1 + K, D) output of that block, before any norm."""

    tokens: Tensor
    taps: dict[int, Tensor]


class TokenEncoder(nn.Module):
    """Base of the image and video ViTs. Subclasses implement `embed` (input -> tokens with
    positions, optionally only `idx_keep`) and `transformer_blocks` / `final_norm`."""

    num_prefix_tokens = 1

    def embed(self, x: Tensor, idx_keep: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def transformer_blocks(self) -> nn.Sequential | nn.ModuleList:
        raise NotImplementedError

    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    @property
    def depth(self) -> int:
        return len(self.transformer_blocks())

    def run_blocks(self, x: Tensor, taps: Sequence[int] = (), stop: int | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        """Run blocks [0, stop) and collect the outputs of the blocks in `taps`."""
        stop = self.depth if stop is None else stop
        if any(not 0 <= t < stop for t in taps):
            raise ValueError(f"taps {list(taps)} must lie in [0, {stop}) for a {self.depth}-block encoder")
        collected = {}
        for index, block in enumerate(self.transformer_blocks()[:stop]):
            x = block(x)
            if index in taps:
                collected[index] = x
        return x, collected

    def encode(self, x: Tensor, idx_keep: Tensor | None = None, taps: Sequence[int] = (), stop: int | None = None) -> Encoded:
        """Encode (visible) tokens; with `stop` the run ends after block stop-1 and skips the final norm."""
        tokens, collected = self.run_blocks(self.embed(x, idx_keep), taps, stop)
        if stop is None or stop == self.depth:
            tokens = self.final_norm()(tokens)
        return Encoded(tokens, collected)

    def forward_features(self, x: Tensor) -> Tensor:
        """Input -> (B, 1 + L, D): all tokens after the final norm (timm's forward_features)."""
        return self.encode(x).tokens

    def forward(self, x: Tensor) -> Tensor:
        """Input -> (B, D) class-token feature (timm's pre-logits output)."""
        return self.forward_features(x)[:, 0]

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Input -> class token (B, D) and patch tokens (B, L, D), both after the final norm."""
        tokens = self.forward_features(x)
        return tokens[:, 0], tokens[:, self.num_prefix_tokens :]
