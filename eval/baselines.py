"""Baselines to report next to a trained backbone: `pixels` (this file) and random init (`model.weights=none`,
`--random-init`, handled by eval/store.py for any backbone).

`--backbone pixels` evaluates the input itself: the image after the eval transform (resize, centre crop,
normalisation) at `model.img_size` (default 32), flattened as the pooled feature (B, C * H * W), and the
pixels of each `model.patch_size` square (default 4) as patch tokens (B, L, p * p * C). A representation
that does not beat it on kNN or a linear probe has learned nothing the pixels did not already give.
"""

from __future__ import annotations

from typing import Any

from lightly.models import utils
from omegaconf import DictConfig
from torch import Tensor, nn

PIXELS = "pixels"


class RawPixels(nn.Module):
    """Features = pixels. Same interface as the backbones: `features`, `forward`, `grid_size`, `spec`."""

    kind = PIXELS

    def __init__(self, img_size: int = 32, patch_size: int = 4) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"pixels: model.img_size={img_size} is not a multiple of model.patch_size={patch_size}"
            )
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)

    @staticmethod
    def sizes(model: DictConfig) -> dict[str, int]:
        return {"img_size": int(model.img_size or 32), "patch_size": int(model.patch_size or 4)}

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": PIXELS, "img_size": self.img_size, "patch_size": self.patch_size}

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (B, C * H * W) and (B, L, p * p * C)."""
        return images.flatten(1), utils.patchify(images, self.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1)
