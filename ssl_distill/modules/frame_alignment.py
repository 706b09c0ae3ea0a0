"""Pairing video tokens with per-frame image tokens (DISCOVR's semantic cluster distillation).

Video tokens are t-major over (T', S) with S = H' * W' spatial positions; frame tokens are
(B, T, S, D) with T = T' * tubelet. The default pairs video token (t, s) with frame t * tubelet
(the tubelet's first frame) at the same s. `official=True` reproduces the released code
(docs/methods/discovr.md, "Token pairing"): every `tubelet`-th token of the flattened (T S) axis as targets,
and decoder outputs in [visible, hidden] order instead of patch order.
"""

from __future__ import annotations

from torch import Tensor

from ssl_distill.backbones import mask_from_keep


def frame_targets(frame_tokens: Tensor, tubelet_size: int, official: bool = False) -> Tensor:
    """(B, T, S, D) per-frame tokens -> (B, T' * S, D) targets, one per video token."""
    if official:  # official `[:, ::2]` on the flattened axis: spatial 2s mod S of frame 2t or 2t + 1
        return frame_tokens.flatten(1, 2)[:, ::tubelet_size]
    return frame_tokens[:, ::tubelet_size].flatten(1, 2)


def official_decoder_order(idx_keep: Tensor, num_patches: int) -> Tensor:
    """(B, L) patch indices in the order the official decoder emits them: the visible patches of
    idx_keep (B, 1 + K, sequence space), then the hidden ones, each ascending."""
    return mask_from_keep(idx_keep, num_patches).argsort(dim=1, stable=True)
