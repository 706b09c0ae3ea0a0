"""Text tower: a transformer encoder trained from scratch, mean-pooled over the non-pad tokens (TIPS,
Maninis et al., ICLR 2025; official `scenic/models/text.py` and `pytorch/text_encoder.py`).

Token embeddings are scaled by sqrt(width), fixed sinusoidal positions are added (tensor2tensor's timing
signal: timescales 1 ... 1e4, sines and cosines as concatenated halves), then pre-norm timm blocks with a
ReLU MLP attend over the real tokens only (pad keys masked), a final LayerNorm, and the mean over the
real tokens. The official blocks also zero the MLP activations at pad positions; with pad keys masked and
pads left out of the mean, those positions never reach the output, so that step is omitted.
The tokenizer is part of the tower (its spec), so an exported tower encodes text by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ssl_distill.backbones.tokenizer import Tokenizer, build_tokenizer


@dataclass
class TextConfig:
    """The text tower (`objective.text` of TIPS). `width` None: the image tower's width (TIPS has no
    projection heads, so both towers share one width). The tokenizer comes from the dataset's options."""

    kind: str = "text"
    width: int | None = None
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # Scenic defaults
    attn_dropout: float = 0.1


def timing_signal(length: int, dim: int, min_timescale: float = 1.0, max_timescale: float = 1.0e4) -> Tensor:
    """(length, dim) fixed positions: [sin(p / t_i) | cos(p / t_i)] with dim / 2 timescales t_i spaced
    geometrically from min to max (tensor2tensor `get_timing_signal_1d`, as the TIPS text encoder)."""
    if dim % 2:
        raise ValueError(f"the text width must be even for sinusoidal positions, got {dim}")
    half = dim // 2
    increment = math.log(max_timescale / min_timescale) / max(half - 1, 1)
    inverse = min_timescale * torch.exp(torch.arange(half, dtype=torch.float64) * -increment)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inverse[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


class TextTransformer(nn.Module):
    """ids (B, L) and mask (B, L) (True on real tokens) -> (B, width) mean of the final-norm real tokens."""

    kind = "text"

    def __init__(
        self,
        tokenizer: dict[str, Any],
        width: int = 128,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        initialize: bool = True,
    ) -> None:
        super().__init__()
        self.tokenizer: Tokenizer = build_tokenizer(tokenizer)
        self.config = dict(
            width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout
        )
        self.token_embed = nn.Embedding(self.tokenizer.vocab_size, width)
        self.register_buffer("positions", timing_signal(self.tokenizer.context_length, width), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, qkv_bias=True, proj_drop=dropout, attn_drop=attn_dropout, act_layer=nn.ReLU)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        if initialize:
            nn.init.normal_(self.token_embed.weight, std=1.0 / math.sqrt(width))
            self.blocks.apply(init_weights)

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer": self.tokenizer.spec, **self.config}

    @property
    def width(self) -> int:
        return self.config["width"]

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if ids.shape[-1] > len(self.positions):
            raise ValueError(f"{ids.shape[-1]} tokens, more than the tower's context of {len(self.positions)}")
        mask = mask.bool()
        x = self.token_embed(ids) * math.sqrt(self.width) + self.positions[: ids.shape[-1]]
        x = self.dropout(x)
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
        bias = bias[:, None, None, :]  # (B, 1, 1, L): every query attends to the real keys only
        for block in self.blocks:
            x = block(x, attn_mask=bias)
        x = self.norm(x)
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Strings -> (N, width) pooled embeddings (not normalised), tokenized by the tower's tokenizer."""
        ids, mask = self.tokenizer.encode(texts)
        device = self.token_embed.weight.device
        return self(ids.to(device), mask.to(device))
