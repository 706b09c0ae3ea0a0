"""The objective contract every method implements; the trainer knows nothing else about a method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_distill.backbones import ViT


@dataclass
class Output:
    """loss: the scalar to back-propagate; logs: named scalars (each loss term, schedules)."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


class Objective(nn.Module):
    """One SSL method: owns its student(s), teacher(s) and heads.

    Subclasses set `Config` (a dataclass: the schema of the config's `objective` section),
    `requires` (batch keys it reads) and `default_transform`, and implement `forward`.
    `backbone` is the encoder that is exported and evaluated.
    """

    Config: ClassVar[type]
    requires: ClassVar[frozenset[str]] = frozenset({"views"})
    default_transform: ClassVar[dict[str, Any]] = {"name": "mae"}

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__()
        self.cfg, self.max_steps = cfg, max_steps

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (EMA teachers, centers, prototypes)."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: with weight decay, and without it for biases, norms,
        1-D parameters and those a submodule lists in `no_weight_decay()` (timm's convention)."""
        exempt: set[str] = set()
        for prefix, module in self.named_modules():
            if hasattr(module, "no_weight_decay") and module is not self:
                exempt |= {f"{prefix}.{name}" for name in module.no_weight_decay()}
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith(".bias") or name in exempt else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay, "apply_wd_schedule": True},
            {"params": no_decay, "weight_decay": 0.0, "apply_wd_schedule": False},
        ]


def build_vit(model_cfg: DictConfig, **extra: Any) -> ViT:
    """The student ViT from the config's `model` section."""
    return ViT(**dict(model_cfg), **extra)
