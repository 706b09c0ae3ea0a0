"""Frozen teacher: a pretrained backbone that runs only as deep as the deepest block it is asked for.

It takes no gradient and no optimizer state, stays in eval mode whatever its parent does, and is not
written into checkpoints (it is rebuilt from its source, so a ViT-L teacher does not bloat every save).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from ssl_distill.backbones import load_backbone


@dataclass
class TeacherConfig:
    source: str = MISSING  # our checkpoint (.pt), exported .safetensors, or a timm name ("timm:<name>")
    weights: str | None = None  # weights file for a timm name
    sizes: dict[str, Any] = field(default_factory=dict)  # timm size overrides for a timm name


class FrozenTeacher(nn.Module):
    """Wraps a backbone; `forward(images, idx_keep)` -> {block: (B, 1 + K, D) float32 pre-norm output}."""

    def __init__(self, backbone: nn.Module, taps: Sequence[int]) -> None:
        super().__init__()
        if not taps:
            raise ValueError("a frozen teacher needs at least one block to tap")
        self.backbone = backbone.requires_grad_(False).eval()
        self.taps = tuple(sorted(set(taps)))
        self.stop = self.taps[-1] + 1
        if self.stop > backbone.depth:
            raise ValueError(f"teacher tap {self.taps[-1]} is beyond its {backbone.depth} blocks")
        self.register_state_dict_post_hook(_drop_own_entries)
        self.register_load_state_dict_pre_hook(_fill_own_entries)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor, idx_keep: Tensor | None = None) -> dict[int, Tensor]:
        encoded = self.backbone.encode(images, idx_keep=idx_keep, taps=self.taps, stop=self.stop)
        return {block: tokens.float() for block, tokens in encoded.taps.items()}


def _drop_own_entries(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _fill_own_entries(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        state_dict.setdefault(prefix + name, tensor.detach())


def load_teacher_backbone(cfg: TeacherConfig) -> nn.Module:
    """Load a teacher backbone from its source (strict: missing or unexpected keys raise)."""
    return load_backbone(cfg.source, weights=cfg.weights, **dict(cfg.sizes))
