"""CNN backbone (`model.kind: cnn`): any timm convolutional network by name (ResNet, ConvNeXt, RegNet, ...),
for objectives that do not mask tokens (DINO, as lightly and solo-learn users train ResNets).

Features follow the ViT interface: `forward` gives the pooled (B, D) feature (timm's pre-logits output,
global average pooling), `features` gives it with the final feature map as (B, H' * W', D) tokens on
`grid_size`. Evaluation uses the pooled feature for `cls` pooling and the feature-map cells as patch
tokens (segmentation runs on that coarse map, stride 32 for a ResNet). There is no class token and no
token dropping, so masked objectives (MAE, DMAE, VideoMAE, DISCOVR) refuse this kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ssl_distill.errors import ConfigError
from ssl_distill.registry import closest


@dataclass
class CNNConfig:
    """`model` section of `kind: cnn`: a timm CNN by name, random init (no download)."""

    kind: str = "cnn"
    name: str = "resnet18"
    img_size: int = 32  # the input size the model is trained and evaluated at (any size runs)
    in_chans: int | None = None  # None: timm's 3
    drop_path_rate: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # further timm.create_model arguments


class CNN(nn.Module):
    """A timm CNN with its classifier removed; `spec` rebuilds it (it goes into exports and checkpoints)."""

    kind = "cnn"
    num_prefix_tokens = 0

    def __init__(
        self,
        name: str = "resnet18",
        img_size: int = 224,
        in_chans: int | None = None,
        drop_path_rate: float = 0.0,
        kwargs: dict[str, Any] | None = None,
        initialize: bool = True,  # timm always initialises; loading replaces the weights
    ) -> None:
        super().__init__()
        if name not in timm.list_models():
            raise ConfigError(f"model.name '{name}' is not a timm model{closest(name, timm.list_models())}")
        self.name, self.img_size = name, int(img_size)
        self.timm_kwargs: dict[str, Any] = dict(kwargs or {})
        if in_chans is not None:
            self.timm_kwargs["in_chans"] = in_chans
        extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        self.model = timm.create_model(name, pretrained=False, num_classes=0, **extra, **self.timm_kwargs)
        if isinstance(self.model, VisionTransformer):
            raise ConfigError(f"model.name '{name}' is a VisionTransformer: use model.kind=vit")

    @property
    def spec(self) -> dict[str, Any]:
        spec = {"kind": self.kind, "name": self.name, "img_size": self.img_size}
        if self.timm_kwargs.get("in_chans") is not None:
            spec["in_chans"] = self.timm_kwargs["in_chans"]
        others = {k: v for k, v in self.timm_kwargs.items() if k != "in_chans"}
        return {**spec, **({"kwargs": others} if others else {})}

    @property
    def embed_dim(self) -> int:
        return int(self.model.num_features)

    @property
    def in_chans(self) -> int:
        return int(self.timm_kwargs.get("in_chans", 3))

    @cached_property
    def grid_size(self) -> tuple[int, int]:
        """(H', W') of the final feature map at `img_size`, measured once with a probe input."""
        training = self.model.training
        with torch.no_grad():
            probe = torch.zeros(1, self.in_chans, self.img_size, self.img_size)
            shape = self.model.eval().forward_features(probe).shape[-2:]
        self.model.train(training)
        return int(shape[0]), int(shape[1])

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) globally pooled feature."""
        return self.model(x)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> pooled feature (B, D) and the final feature map as tokens (B, H' * W', D)."""
        fmap = self.model.forward_features(x)
        return self.model.forward_head(fmap, pre_logits=True), fmap.flatten(2).transpose(1, 2)
