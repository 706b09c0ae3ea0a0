"""Convolutional VAE encoders over aligned views (MRDD, Ke et al., CVPR 2024; official
`src/models/autoencoder.py`, `consistency_models.py`, `specificity_models.py`).

- `ConvEncoder` / `ConvDecoder`: the taming-style networks of the official code with BatchNorm (not
  GroupNorm) and swish. Encoder: conv3x3 to `hidden_dim`, per level `num_res_blocks` residual blocks to
  `hidden_dim * ch_mult[level]`, a stride-2 conv (after padding (0, 1, 0, 1)) between levels, two mid
  blocks, BN, swish and a conv3x3 to `latent_ch`; the (latent_ch, g, g) map is flattened. Decoder: the
  mirror, with `num_res_blocks + 1` blocks per level, nearest x2 upsampling + conv3x3 between levels
  and no output activation.
- `ConvVAEEncoder` (`model.kind: conv_vae`): one encoder shared by all V views, the V flat latents
  concatenated and mapped to a Gaussian (mu, logvar) of `latent_dim` (MRDD's `ConsistencyAE` encoder
  with `fc_z`; with V = 1, a view-specific encoder with its `to_dist_layer`). The official `fc_z` input is
  hard-coded to 512 per view; here it follows the sizes.
- `MRDDEncoder` (`kind: mrdd`): what MRDD exports and evaluates: the consistency encoder and, after
  stage 2, one specific encoder per view; `representations(views)` gives the means (never samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_distill.errors import ConfigError


@dataclass
class ConvVAEConfig:
    """`model` section of `kind: conv_vae` (MRDD's EdgeMNIST sizes by default)."""

    kind: str = "conv_vae"
    img_size: int = 32
    in_chans: int = 1
    num_views: int = 2
    hidden_dim: int = 16
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 3
    latent_ch: int = 8


class ResBlock(nn.Module):
    """x + conv(swish(BN(conv(swish(BN(x)))))), the input through a 1x1 conv when the width changes
    (official `ResnetBlock`; timm's pre-activation blocks project the pre-activated input instead)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = nn.BatchNorm2d(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def latent_grid(img_size: int, ch_mult: Sequence[int]) -> int:
    factor = 2 ** (len(ch_mult) - 1)
    if img_size % factor:
        raise ConfigError(f"model.img_size {img_size} must be a multiple of {factor} for {len(ch_mult)} levels")
    return img_size // factor


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, latent_ch * g * g), g = H / 2^(levels - 1)."""

    def __init__(self, in_chans: int, hidden_dim: int, ch_mult: Sequence[int], num_res_blocks: int, latent_ch: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, hidden_dim, 3, padding=1)]
        ch = hidden_dim
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(ch, hidden_dim * mult))
                ch = hidden_dim * mult
            if level != len(ch_mult) - 1:
                layers.append(Downsample(ch))
        layers += [ResBlock(ch, ch), ResBlock(ch, ch), nn.BatchNorm2d(ch), nn.SiLU(), nn.Conv2d(ch, latent_ch, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


class ConvDecoder(nn.Module):
    """(B, latent_ch * g * g) -> (B, out_chans, H, W), no output activation."""

    def __init__(self, out_chans: int, hidden_dim: int, ch_mult: Sequence[int], num_res_blocks: int, latent_ch: int, grid: int) -> None:
        super().__init__()
        self.latent_shape = (latent_ch, grid, grid)
        ch = hidden_dim * ch_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_ch, ch, 3, padding=1), ResBlock(ch, ch), ResBlock(ch, ch)]
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(ch, hidden_dim * ch_mult[level]))
                ch = hidden_dim * ch_mult[level]
            if level != 0:
                layers.append(Upsample(ch))
        layers += [nn.BatchNorm2d(ch), nn.SiLU(), nn.Conv2d(ch, out_chans, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.view(len(z), *self.latent_shape))


class ConvVAEEncoder(nn.Module):
    """V views (each (B, C, H, W)) -> one shared ConvEncoder each -> concatenated -> Linear -> (mu, logvar),
    each (B, latent_dim). PyTorch's default initialisation, as the official code (`initialize` is the
    factory's flag; loading overwrites every weight anyway)."""

    kind = "conv_vae"

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 1,
        num_views: int = 2,
        hidden_dim: int = 16,
        ch_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 3,
        latent_ch: int = 8,
        latent_dim: int = 10,
        initialize: bool = True,
    ) -> None:
        super().__init__()
        self.config = dict(
            img_size=img_size, in_chans=in_chans, num_views=num_views, hidden_dim=hidden_dim, ch_mult=list(ch_mult),
            num_res_blocks=num_res_blocks, latent_ch=latent_ch, latent_dim=latent_dim,
        )
        self.grid = latent_grid(img_size, ch_mult)
        self.flat_dim = latent_ch * self.grid**2
        self.encoder = ConvEncoder(in_chans, hidden_dim, ch_mult, num_res_blocks, latent_ch)
        self.to_gaussian = nn.Linear(self.flat_dim * num_views, 2 * latent_dim)

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.config}

    @property
    def num_views(self) -> int:
        return self.config["num_views"]

    @property
    def latent_dim(self) -> int:
        return self.config["latent_dim"]

    def check_views(self, views: Sequence[Tensor]) -> None:
        c, size = self.config["in_chans"], self.config["img_size"]
        if len(views) != self.num_views:
            raise ValueError(f"the encoder takes {self.num_views} views, got {len(views)}")
        for index, view in enumerate(views):
            if tuple(view.shape[1:]) != (c, size, size):
                raise ValueError(
                    f"view {index} has shape {tuple(view.shape[1:])}; the shared encoder takes ({c}, {size}, {size})"
                )

    def forward(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        self.check_views(views)
        # view by view, as the official loop: BatchNorm sees each view's batch statistics on their own
        flat = torch.cat([self.encoder(view) for view in views], dim=1)
        mu, logvar = self.to_gaussian(flat).chunk(2, dim=1)
        return mu, logvar


class MRDDEncoder(nn.Module):
    """The consistency encoder (any number of views) and, after stage 2, a specific encoder per view.

    `representations(views)`: 'consistent' c (B, c_dim); with specific encoders also 'specific' s_best
    (B, v_dim), the specific code of view `best_view`, and 'combined' [c, s_best] (the official fusion
    'CV'). Means only: the official `ViewSpecificAE.latent()` samples even at evaluation.
    """

    kind = "mrdd"

    def __init__(self, consistency: dict[str, Any], specific: list[dict[str, Any]] | None = None, best_view: int = 0,
                 initialize: bool = True) -> None:
        super().__init__()
        specific = list(specific or [])
        self.consistency = ConvVAEEncoder(**{k: v for k, v in consistency.items() if k != "kind"})
        self.specific = nn.ModuleList(ConvVAEEncoder(**{k: v for k, v in s.items() if k != "kind"}) for s in specific)
        if specific and not 0 <= best_view < len(specific):
            raise ConfigError(f"objective.best_view {best_view} is not one of the {len(specific)} views")
        self.best_view = best_view

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "consistency": self.consistency.spec,
            "specific": [encoder.spec for encoder in self.specific],
            "best_view": self.best_view,
        }

    @property
    def representation_names(self) -> tuple[str, ...]:
        return ("consistent", "specific", "combined") if len(self.specific) else ("consistent",)

    def representations(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        """V views -> {name: (B, D)} (see the class docstring)."""
        consistent, _ = self.consistency(views)
        result = {"consistent": consistent}
        if len(self.specific):
            specific, _ = self.specific[self.best_view]([views[self.best_view]])
            result.update(specific=specific, combined=torch.cat([consistent, specific], dim=1))
        return result

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        return self.representations(views)["combined" if len(self.specific) else "consistent"]
