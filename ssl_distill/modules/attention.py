"""Attention relations of timm ViT blocks. timm's fused attention (scaled_dot_product_attention) never
stores the attention map, so queries and keys are captured from each block's `attn.qkv` output and the
logits recomputed in float32."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import torch
from torch import Tensor, nn


class QKCapture:
    """Within `with QKCapture(blocks, indices) as capture:`, every forward of block i (i in `indices`)
    stores `capture.qk[i] = (q, k)`, each (B, N, C): the block's queries and keys after its `q_norm` /
    `k_norm`, heads concatenated along C (timm's `Attention` layout). They keep their autograd graph."""

    def __init__(self, blocks: Sequence[nn.Module], indices: Sequence[int]) -> None:
        self.blocks, self.indices = blocks, sorted(set(indices))
        self.qk: dict[int, tuple[Tensor, Tensor]] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> QKCapture:
        for index in self.indices:
            attn = self.blocks[index].attn
            self.handles.append(attn.qkv.register_forward_hook(self._hook(index, attn)))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, index: int, attn: nn.Module):
        def store(module: nn.Module, inputs: tuple[Tensor, ...], qkv: Tensor) -> None:
            batch, tokens, _ = qkv.shape
            q, k, _ = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = attn.q_norm(q), attn.k_norm(k)  # (B, H, N, d)
            self.qk[index] = (q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2))

        return store


def relation_logits(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """q, k (B, N, C) -> (B, heads, N, N) logits q_h k_hᵀ / √(C / heads) in float32, after splitting C into
    `heads` relation heads (MiniLM-v2's; with the block's own head count these are its attention logits,
    so a student and teacher of different widths compare `heads` distributions per token)."""
    batch, tokens, channels = q.shape
    if channels % heads:
        raise ValueError(f"{channels} channels do not split into {heads} relation heads")
    q = q.float().reshape(batch, tokens, heads, -1).transpose(1, 2)
    k = k.float().reshape(batch, tokens, heads, -1).transpose(1, 2)
    return q @ k.transpose(-2, -1) * (channels // heads) ** -0.5
