"""Image-text datasets: an image with one or more captions per caption stream, tokenized per item.

A source is an image source (`Sample`: image, label, mask) that also gives `captions(i)` ({stream: [the
item's captions]}). Training wraps it in `ViewDataset`, which adds the source's `extras`: 'text' (K, L)
int64 token ids and 'text_mask' (K, L) bool (True on real tokens), one row per stream in
`data.options.captions` order (one caption drawn per stream when an item has several). Evaluation reads
the raw captions. Tokenizers: see `ssl_distill/backbones/tokenizer.py` (CLIP BPE by default, or a
SentencePiece model file); the mask of each row is that row's own.

Sources:
- `shapes_text`: the `shapes` scenes (same images, labels and masks) with a `noisy` caption (the class
  name in web alt-text style, the wrong class for ~20% of items) and a `synthetic` caption made from the
  pixels and the mask, like TIPS's generated captions: size, colour, shape, position and background
  ("a large red disk in the top left on a dark blue background").
- `image_text`: a CSV or JSONL file with an `image` (or `path`) column, optional `label` and `split`, and
  one column per caption stream (JSONL values may be lists of alternative captions).

The `global_local` view transform gives TIPS's views: the whole image (resized, colours and positions kept,
so captions still describe it) then local crops for self-distillation.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from lightly.transforms.dino_transform import DINOViewTransform
from PIL import Image
from torch import Tensor

from ssl_distill.backbones.tokenizer import Tokenizer, tokenizer_from_options
from ssl_distill.data.bundled import SHAPE_CLASSES, make_shapes
from ssl_distill.data.images import SHAPES_SIZES, ImageSource, Sample
from ssl_distill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl_distill.registry import DATASETS, TRANSFORMS


@dataclass
class CaptionOptions:
    """`data.options` shared by image-text datasets: which caption streams (in order), and the tokenizer."""

    captions: list[str] = field(default_factory=lambda: ["caption"])
    tokenizer: str = "clip"  # clip (bundled with open_clip) | sentencepiece (tokenizer_file)
    tokenizer_file: str | None = None  # a SentencePiece .model file
    context_length: int = 32
    lowercase: bool = True


@dataclass
class ShapesTextOptions(CaptionOptions):
    captions: list[str] = field(default_factory=lambda: ["noisy", "synthetic"])
    noise: float = 0.2  # fraction of noisy captions naming a wrong class


class ImageTextSource(ImageSource):
    """Images with labels (and masks) plus caption streams; `extras(i)` tokenizes one caption per stream."""

    extra_keys = frozenset({"text", "text_mask"})

    def __init__(self, images: list[Any], labels: np.ndarray, classes: tuple[str, ...], captions: dict[str, list[list[str]]],
                 streams: list[str], tokenizer: dict[str, Any], masks: np.ndarray | None = None, names: list[str] | None = None):
        missing = [s for s in streams if s not in captions]
        if missing or not streams:
            raise ValueError(f"data.options.captions: {missing or '[]'} not among the caption streams {sorted(captions)}")
        self.images, self.labels, self.classes, self.masks = images, labels, classes, masks
        self.has_masks = masks is not None
        self.streams, self.all_captions = list(streams), captions
        self.names = names or [str(i) for i in range(len(labels))]
        self.tokenizer_options = tokenizer
        for stream in self.streams:
            for name, texts in zip(self.names, captions[stream]):
                if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                    raise ValueError(f"item '{name}': caption stream '{stream}' has an empty caption")

    @cached_property
    def tokenizer(self) -> Tokenizer:
        o = self.tokenizer_options
        return tokenizer_from_options(o["tokenizer"], o["tokenizer_file"], o["context_length"], o["lowercase"])

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "tokenizer"}

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, index: int) -> Sample:
        image = self.images[index]
        if isinstance(image, Path):
            try:
                with Image.open(image) as file:
                    image = file.convert("RGB")
            except OSError as error:
                raise OSError(f"item '{self.names[index]}': cannot read image {image}: {error}") from None
        else:
            image = Image.fromarray(image).convert("RGB")
        return Sample(image, int(self.labels[index]), None if self.masks is None else self.masks[index])

    def captions(self, index: int) -> dict[str, list[str]]:
        """{stream: the item's captions} for every stream of the source."""
        return {stream: list(texts[index]) for stream, texts in self.all_captions.items()}

    def extras(self, index: int) -> dict[str, Tensor]:
        """'text' (K, L) ids and 'text_mask' (K, L), one caption per stream (a random one when several)."""
        texts = []
        for stream in self.streams:
            options = self.all_captions[stream][index]
            texts.append(options[int(torch.randint(len(options), ()))] if len(options) > 1 else options[0])
        ids, mask = self.tokenizer.encode(texts)
        return {"text": ids, "text_mask": mask}


# -- the shapes captioner ----------------------------------------------------------------------------------

COLOURS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (220, 30, 30),
    "green": (30, 170, 30), "blue": (30, 60, 220), "yellow": (230, 220, 40), "cyan": (40, 210, 220),
    "magenta": (210, 40, 200), "orange": (240, 140, 20), "purple": (120, 40, 160), "brown": (130, 80, 30),
}
NOISY_TEMPLATES = (
    "{}", "a {}", "a photo of a {}", "IMG_{:04d} {}", "{} shape clipart", "{} stock image", "download {} icon",
    "my {} drawing", "{} pattern {:d}",
)


def colour_name(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[name] for name in names], dtype=np.float64)
    return names[int(np.argmin(((palette - rgb[None]) ** 2).sum(1)))]


def synthetic_caption(image: np.ndarray, mask: np.ndarray, shape: str) -> str:
    """A rule-based caption of one scene from its pixels and mask: size, colour, shape, position, background."""
    inside = mask > 0
    size = image.shape[0]
    rows, cols = np.nonzero(inside)
    vertical = ("top", "middle", "bottom")[min(int(3 * rows.mean() / size), 2)]
    horizontal = ("left", "center", "right")[min(int(3 * cols.mean() / size), 2)]
    where = "the center" if (vertical, horizontal) == ("middle", "center") else f"the {vertical} {horizontal}"
    area = inside.mean()
    scale = "small" if area < 0.12 else "large" if area > 0.22 else "medium"
    background = image[~inside].mean(0)
    shade = "dark " if background.mean() < 100 else "light " if background.mean() > 170 else ""
    return f"a {scale} {colour_name(image[inside].mean(0))} {shape} in {where} on a {shade}{colour_name(background)} background"


def noisy_caption(rng: np.random.Generator, label: int, noise: float, classes: tuple[str, ...]) -> str:
    """Web alt-text style: a template around the class name, the wrong class with probability `noise`."""
    if rng.random() < noise:
        label = int(rng.choice([c for c in range(len(classes)) if c != label]))
    template = NOISY_TEMPLATES[int(rng.integers(len(NOISY_TEMPLATES)))]
    number = int(rng.integers(10000))
    if template.startswith("IMG"):
        return template.format(number, classes[label])
    return template.format(classes[label], number) if template.count("{") == 2 else template.format(classes[label])


@DATASETS.register("shapes_text", config=ShapesTextOptions)
def shapes_text(root: str | None = None, split: str = "train", limit: int | None = None, noise: float = 0.2,
                **options: Any) -> ImageTextSource:
    """The `shapes` scenes (train 4,000 / val 1,000 / test 1,000) with `noisy` and `synthetic` captions."""
    if split not in SHAPES_SIZES:
        raise ValueError(f"data.split for shapes_text must be one of {sorted(SHAPES_SIZES)}, got '{split}'")
    n, seed = SHAPES_SIZES[split]
    images, labels, masks = make_shapes(n if limit is None else min(n, limit), seed=seed)
    rng = np.random.default_rng(1000 + seed)
    captions = {
        "noisy": [[noisy_caption(rng, int(label), noise, SHAPE_CLASSES)] for label in labels],
        "synthetic": [[synthetic_caption(image, mask, SHAPE_CLASSES[label])] for image, mask, label in zip(images, masks, labels)],
    }
    streams = options.pop("captions")
    return ImageTextSource(list(images), labels, SHAPE_CLASSES, captions, streams, options, masks)


# -- CSV / JSONL -----------------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: line {number} is not JSON: {error}") from None
        return rows
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@DATASETS.register("image_text", config=CaptionOptions)
def image_text(root: str | None = None, split: str = "train", limit: int | None = None, **options: Any) -> ImageTextSource:
    """A .csv or .jsonl of `image` (or `path`), optional `label` and `split`, and the caption streams named in
    `data.options.captions` (a string, or in JSONL a list of alternatives). Paths are relative to the file."""
    path = Path(root) if root else None
    if path is None or not path.is_file() or path.suffix not in (".csv", ".jsonl"):
        raise FileNotFoundError(f"data.root: a .csv or .jsonl file of images and captions, got {root}")
    rows = [row for row in _rows(path) if "split" not in row or row["split"] == split][:limit]
    if not rows:
        raise FileNotFoundError(f"{path}: no items for split '{split}'")
    streams = options.pop("captions")
    images, names, captions = [], [], {stream: [] for stream in streams}
    for number, row in enumerate(rows, 1):
        file = row.get("image", row.get("path"))
        name = row.get("id") or f"row {number}"
        if not file:
            raise ValueError(f"{path}: item '{name}' has no 'image' (or 'path') value")
        for stream in streams:
            if stream not in row:
                raise ValueError(f"{path}: item '{name}' has no caption '{stream}' (data.options.captions)")
            value = row[stream]
            captions[stream].append(list(value) if isinstance(value, list) else [value])
        images.append(path.parent / file)
        names.append(name)
    missing = [(n, f) for n, f in zip(names, images) if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: item '{missing[0][0]}': image not found: {missing[0][1]}")
    classes = tuple(sorted({str(row.get("label", "") or "") for row in rows}))
    labels = np.array([classes.index(str(row.get("label", "") or "")) for row in rows], dtype=np.int64)
    return ImageTextSource(images, labels, classes, captions, streams, options, names=names)


# -- views -----------------------------------------------------------------------------------------------------


@dataclass
class GlobalLocalConfig:
    """TIPS's views: the whole image resized to `global_size` (no crop, no colour change: the captions
    describe it), then `n_local_views` random crops of `local_size` at `local_crop_scale` with DINO's
    local augmentations (lightly `DINOViewTransform`)."""

    name: str = "global_local"
    global_size: int = 32
    global_hflip: float = 0.0  # flips change the left/right words of spatial captions
    local_size: int = 16
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    n_local_views: int = 6
    cj_prob: float = 0.8
    random_gray_scale: float = 0.2
    blur: float = 0.5
    solarization_prob: float = 0.0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


def _global_local(cfg: GlobalLocalConfig) -> Callable[[Image.Image], list[Tensor]]:
    normalize = {"mean": list(cfg.mean), "std": list(cfg.std)}
    whole = T.Compose([
        T.Resize((cfg.global_size, cfg.global_size), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(cfg.global_hflip),
        T.ToTensor(),
        T.Normalize(normalize["mean"], normalize["std"]),
    ])
    local = DINOViewTransform(
        crop_size=cfg.local_size, crop_scale=tuple(cfg.local_crop_scale), cj_prob=cfg.cj_prob,
        random_gray_scale=cfg.random_gray_scale, gaussian_blur=cfg.blur, solarization_prob=cfg.solarization_prob,
        normalize=normalize,
    )
    return lambda image: [whole(image), *(local(image) for _ in range(cfg.n_local_views))]


TRANSFORMS.register("global_local", config=GlobalLocalConfig)(_global_local)
