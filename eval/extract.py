"""Frozen-backbone feature extraction: batched no-grad forward passes and pooling.

A dataset plugs in through an adapter that maps its items to `Item(input, label, target, mask)`:
image sources (`Sample`) get the deterministic eval transform, video datasets (dict items with a
`video` clip) pass through. When the inputs and the backbone differ in kind, `backbone_for` bridges
them: a video backbone sees an image as a static clip (`StaticClip`), an image backbone sees a clip
frame by frame (`FrameAverage`); either way the features sit on the 2-D (H', W') patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from ssl_distill.data import eval_transform


@dataclass
class Item:
    """One dataset item, ready for the backbone: input (C, H, W) image, (C, T, H, W) clip or (K, C, T, H, W)
    clips; target is a continuous label (e.g. ejection fraction), NaN if none; mask (H, W) (or (T, H, W)
    for a clip) int64 class per pixel, or None."""

    input: Tensor
    label: int
    target: float
    mask: Tensor | None


@dataclass
class Features:
    """Features of one split. feats: (N, D) pooled, or (N, L, D) float16 patch tokens on `grid`;
    labels (N,) int64; targets (N,) float32 (NaN: none); masks (N, H, W) int64 or None."""

    feats: Tensor
    labels: Tensor
    targets: Tensor
    masks: Tensor | None
    grid: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1


class ImageAdapter:
    """Sample(image, label, mask) -> Item; a mask goes through the same resize and centre crop (nearest)."""

    def __init__(self, img_size: int, mean: list[float], std: list[float]) -> None:
        self.img_size = img_size
        self.transform = eval_transform(img_size, mean, std)
        self.key = {"kind": "image", "img_size": img_size, "mean": list(mean), "std": list(std)}

    def __call__(self, sample: Any) -> Item:
        mask = None
        if sample.mask is not None:
            mask = torch.as_tensor(np.asarray(sample.mask), dtype=torch.int64)[None]
            if mask.shape[-2:] != (self.img_size, self.img_size):
                mask = TF.resize(mask, self.img_size, interpolation=TF.InterpolationMode.NEAREST)
                mask = TF.center_crop(mask, self.img_size)
            mask = mask[0]
        return Item(self.transform(sample.image), int(sample.label), math.nan, mask)


class VideoAdapter:
    """{'video': (C, T, H, W) or (K, C, T, H, W) clips, 'label', 'ef'[, 'frame_masks']} -> Item; the
    dataset's own clip transform applies (for evaluation, give it a deterministic one)."""

    key = {"kind": "video"}

    def __call__(self, item: dict[str, Any]) -> Item:
        mask = item.get("frame_masks")
        return Item(
            torch.as_tensor(item["video"], dtype=torch.float32),
            int(item["label"]),
            float(item.get("ef", math.nan)),
            None if mask is None else torch.as_tensor(mask, dtype=torch.int64),
        )


Adapter = Callable[[Any], Item]


class StaticClip(nn.Module):
    """A video backbone on images: an image (B, C, H, W) goes in as a clip of its `num_frames` copies
    (B, C, T, H, W); the patch tokens (B, T' * H' * W', D), in t-major order, are averaged over the T'
    time positions -> (B, H' * W', D) on the grid (H', W'). The class token is the clip's."""

    def __init__(self, video: nn.Module) -> None:
        super().__init__()
        self.video = video
        self.num_frames = int(video.spec["num_frames"])
        self.grid_size = tuple(video.grid_size[1:])

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cls, tokens = self.video.features(images.unsqueeze(2).expand(-1, -1, self.num_frames, -1, -1))
        return cls, tokens.unflatten(1, (self.video.grid_size[0], -1)).mean(1)


class FrameAverage(nn.Module):
    """An image backbone on clips: each frame of (B, C, T, H, W) is encoded alone; the class tokens
    and the patch tokens are averaged over the T frames -> (B, D) and (B, H' * W', D)."""

    def __init__(self, image: nn.Module) -> None:
        super().__init__()
        self.image = image
        self.grid_size = tuple(image.grid_size)

    def features(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        batch, frames = clips.shape[0], clips.shape[2]
        cls, tokens = self.image.features(clips.transpose(1, 2).flatten(0, 1))
        return cls.unflatten(0, (batch, frames)).mean(1), tokens.unflatten(0, (batch, frames)).mean(1)


def backbone_for(backbone: nn.Module, adapter: Adapter) -> nn.Module:
    """The backbone as the adapter's inputs need it: a video backbone (3-D grid) on images becomes a
    `StaticClip`, an image backbone on clips a `FrameAverage`; otherwise it is returned as is."""
    video = len(backbone.grid_size) == 3
    if video and isinstance(adapter, ImageAdapter):
        return StaticClip(backbone)
    if not video and isinstance(adapter, VideoAdapter):
        return FrameAverage(backbone)
    return backbone


def adapter_for(source: Dataset, img_size: int | None, mean: list[float], std: list[float]) -> Adapter:
    """Pick the adapter from the first item: a dict with 'video' is a clip, anything else an image Sample."""
    first = next(iter(source)) if isinstance(source, IterableDataset) else source[0]
    if isinstance(first, dict) and "video" in first:
        return VideoAdapter()
    if img_size is None:
        raise ValueError("image data needs data.img_size (the backbone's spec has no img_size)")
    return ImageAdapter(img_size, mean, std)


class _Adapted(Dataset):
    def __init__(self, source: Dataset, adapter: Adapter) -> None:
        self.source, self.adapter = source, adapter

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Item:
        return self.adapter(self.source[index])


class _AdaptedStream(IterableDataset):
    def __init__(self, source: IterableDataset, adapter: Adapter) -> None:
        self.source, self.adapter = source, adapter

    def __iter__(self) -> Iterator[Item]:
        return map(self.adapter, self.source)


def _collate(items: list[Item]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    masks = None if any(item.mask is None for item in items) else torch.stack([item.mask for item in items])
    return (
        torch.stack([item.input for item in items]),
        torch.tensor([item.label for item in items], dtype=torch.int64),
        torch.tensor([item.target for item in items], dtype=torch.float32),
        masks,
    )


def pool(cls: Tensor, tokens: Tensor, pooling: str) -> Tensor:
    """cls (B, D), tokens (B, L, D) -> (B, D) 'cls' / 'mean', (B, 2D) 'cls_mean', or (B, L, D) 'patch'."""
    if pooling == "cls":
        return cls
    if pooling == "mean":
        return tokens.mean(1)
    if pooling == "cls_mean":
        return torch.cat([cls, tokens.mean(1)], dim=1)
    if pooling == "patch":
        return tokens
    raise ValueError(f"unknown pooling '{pooling}'")


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    adapter: Adapter,
    pooling: str = "cls",
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    classes: tuple[str, ...] = (),
    progress: bool = False,
    desc: str = "features",
) -> Features:
    """Run the backbone over a dataset in batches (bf16 autocast on GPU) and pool its outputs; items of
    K clips (B, K, C, T, H, W) get the mean of their clips' pooled features. Images meet a video
    backbone, and clips an image backbone, through `backbone_for`."""
    device = torch.device(device)
    backbone = backbone_for(backbone.eval().to(device), adapter)
    if isinstance(dataset, IterableDataset):  # shards (data/shards.py): workers take turns by batch, in order
        adapted: Dataset = _AdaptedStream(dataset.for_loader(batch_size), adapter)
    else:
        adapted = _Adapted(dataset, adapter)
    loader = DataLoader(
        adapted,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    feats, labels, targets, masks = [], [], [], []
    for inputs, label, target, mask in tqdm(loader, desc=desc, disable=not progress, leave=False):
        clips = inputs.shape[1] if inputs.dim() == 6 else 0
        inputs = inputs.flatten(0, 1) if clips else inputs
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            cls, tokens = backbone.features(inputs.to(device, non_blocking=True))
        pooled = pool(cls.float(), tokens.float(), pooling)
        pooled = pooled.unflatten(0, (-1, clips)).mean(1) if clips else pooled
        feats.append(pooled.half().cpu() if pooling == "patch" else pooled.cpu())
        labels.append(label)
        targets.append(target)
        masks.append(mask)
    return Features(
        feats=torch.cat(feats),
        labels=torch.cat(labels),
        targets=torch.cat(targets),
        masks=None if any(m is None for m in masks) else torch.cat(masks),
        grid=tuple(int(g) for g in backbone.grid_size),
        classes=tuple(classes),
    )
