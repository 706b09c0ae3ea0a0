"""Generated sets for patch-level methods (no download), seeded, with train / val / test splits
(a `limit` takes the first images of the full split, so it never changes them), generated on first use
and cached on disk like the bundled MNIST.

- `shapes_fine`: fine-grained categories. Every image shows the same kind of object, an elongated body
  at a random position, size, rotation and colour on a textured background; the class is set only by
  two small marks on it: the glyph at one end ("head": disk, ring, cross or bar) and at the other
  ("tail": dot or stripe). Class = head glyph + 4 * tail glyph, so with the default 8 classes the
  evidence lies in about two 6x6-pixel patches of a 32x32 image, and colour, pose and texture say
  nothing about the class. Masks: 0 background, 1 body, 2 marks.
- `shapes_scenes`: multi-object scenes for dense evaluation: 2 to 4 objects of the 5 `shapes` classes,
  at random positions and sizes (later ones occlude earlier ones), colours and a textured background.
  Masks: 0 background, class + 1 on each object's visible pixels. The image label is the class with
  the most visible pixels (for kNN and neighbour checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ssl_distill.data.bundled import SHAPE_CLASSES, _shape_mask, _smooth_noise, cache_dir
from ssl_distill.data.images import ArraySource, ImageSource
from ssl_distill.files import atomic_path
from ssl_distill.registry import DATASETS
from ssl_distill.schema import ranged

HEAD_GLYPHS = ("disk", "ring", "cross", "bar")
TAIL_GLYPHS = ("dot", "stripe")
FINE_CLASSES = tuple(f"{head}+{tail}" for tail in TAIL_GLYPHS for head in HEAD_GLYPHS)

FINE_SPLITS = {"train": (3000, 10), "val": (600, 11), "test": (900, 12)}  # (images, seed)
SCENE_SPLITS = {"train": (3000, 20), "val": (600, 21), "test": (600, 22)}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) textured background in [0, 1]."""
    return rng.uniform(0.1, 0.9, size=3)[None, None] * (0.6 + 0.4 * _smooth_noise(rng, size, 4)[..., None])


def _contrasting(rng: np.random.Generator, reference: np.ndarray, gap: float = 0.6) -> np.ndarray:
    """A random RGB colour whose L1 distance to `reference` (3,) is at least `gap`."""
    colour = rng.uniform(0.0, 1.0, size=3)
    while np.abs(colour - reference).sum() < gap:
        colour = rng.uniform(0.0, 1.0, size=3)
    return colour


def _glyph(kind: str, size: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    """(size, size) bool mask of a small mark centred at (cy, cx), rotated with the body by `angle`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    along, across = c * dx + s * dy, -s * dx + c * dy  # along the body's long axis, across it
    r2 = dx**2 + dy**2
    if kind == "disk":
        return r2 <= radius**2
    if kind == "ring":
        return (r2 <= radius**2) & (r2 >= (0.5 * radius) ** 2)
    if kind == "cross":
        arm = 0.3 * radius
        return ((np.abs(along) <= arm) & (np.abs(across) <= radius)) | ((np.abs(across) <= arm) & (np.abs(along) <= radius))
    if kind == "bar":  # across the body
        return (np.abs(along) <= 0.35 * radius) & (np.abs(across) <= radius)
    if kind == "dot":
        return r2 <= (0.55 * radius) ** 2
    if kind == "stripe":  # along the body
        return (np.abs(across) <= 0.35 * radius) & (np.abs(along) <= 1.1 * radius)
    raise ValueError(kind)


def make_fine_shapes(n: int, size: int = 32, seed: int = 0, num_classes: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images of `shapes_fine`: uint8 images (n, size, size, 3), labels (n,), masks (n, size, size).

    Classes cycle (balanced) and are shuffled; class c has head glyph c % 4 and tail glyph c // 4."""
    if not 2 <= num_classes <= len(FINE_CLASSES):
        raise ValueError(f"shapes_fine has 2 to {len(FINE_CLASSES)} classes, got {num_classes}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    for i, label in enumerate(labels):
        length, width = rng.uniform(0.30, 0.38) * size, rng.uniform(0.17, 0.22) * size
        cy, cx = size / 2 + rng.uniform(-0.06, 0.06, size=2) * size
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        along, across = c * (xx - cx) + s * (yy - cy), -s * (xx - cx) + c * (yy - cy)
        body = (along / length) ** 2 + (across / width) ** 2 <= 1.0
        background = _background(rng, size)
        body_colour = _contrasting(rng, background.mean((0, 1)))
        mark_colour = _contrasting(rng, body_colour)
        radius = 0.1 * size
        head = _glyph(HEAD_GLYPHS[label % 4], size, cy + s * 0.5 * length, cx + c * 0.5 * length, radius, angle)
        tail = _glyph(TAIL_GLYPHS[label // 4], size, cy - s * 0.5 * length, cx - c * 0.5 * length, radius, angle)
        marks = (head | tail) & body
        image = np.where(body[..., None], body_colour[None, None], background)
        image = np.where(marks[..., None], mark_colour[None, None], image)
        image = image + rng.normal(0, 0.03, size=image.shape)
        images[i] = (image.clip(0, 1) * 255).round().astype(np.uint8)
        masks[i][body] = 1
        masks[i][marks] = 2
    return images, labels.astype(np.int64), masks


def make_scenes(n: int, size: int = 32, seed: int = 0, max_objects: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n multi-object scenes: uint8 images (n, size, size, 3), labels (n,) = the class with the most
    visible pixels, masks (n, size, size) with class + 1 per visible object pixel, 0 background."""
    if max_objects < 2:
        raise ValueError(f"shapes_scenes needs max_objects >= 2, got {max_objects}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        background = _background(rng, size)
        image, mask = background.copy(), masks[i]
        for _ in range(rng.integers(2, max_objects + 1)):
            kind = int(rng.integers(len(SHAPE_CLASSES)))
            radius = rng.uniform(0.14, 0.24) * size
            cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
            shape = _shape_mask(SHAPE_CLASSES[kind], size, cy, cx, radius, rng.uniform(0, 2 * np.pi))
            image = np.where(shape[..., None], _contrasting(rng, background.mean((0, 1)))[None, None], image)
            mask[shape] = kind + 1
        image = image + rng.normal(0, 0.03, size=image.shape)
        images[i] = (image.clip(0, 1) * 255).round().astype(np.uint8)
        areas = np.bincount(mask.ravel(), minlength=len(SHAPE_CLASSES) + 1)[1:]
        labels[i] = int(areas.argmax())
    return images, labels, masks


GENERATOR_VERSION = 1  # bump when a generator changes, so cached files are not reused


@lru_cache(maxsize=8)
def _generated(kind: str, n: int, seed: int, size: int, extra: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A full split, from the on-disk cache (`$SSL_DISTILL_CACHE`) when it is there, else generated and cached."""
    cached = cache_dir() / f"shapes_{kind}_v{GENERATOR_VERSION}_{n}_{seed}_{size}_{extra}.npz"
    if cached.is_file():
        with np.load(cached) as data:
            return data["images"], data["labels"], data["masks"]
    made = make_fine_shapes(n, size, seed, extra) if kind == "fine" else make_scenes(n, size, seed, extra)
    with atomic_path(cached, fsync=False) as tmp:
        np.savez(tmp, images=made[0], labels=made[1], masks=made[2])
    return made


def _split(name: str, splits: dict[str, tuple[int, int]], split: str) -> tuple[int, int]:
    if split not in splits:
        raise ValueError(f"data.split for {name} must be one of {sorted(splits)}, got '{split}'")
    return splits[split]


@dataclass
class FineShapesOptions:
    """`data.options` of shapes_fine."""

    size: int = ranged(32, "[8, inf)")
    num_classes: int = ranged(8, "[2, 8]")


@dataclass
class SceneOptions:
    """`data.options` of shapes_scenes."""

    size: int = ranged(32, "[8, inf)")
    max_objects: int = ranged(4, "[2, inf)")


@DATASETS.register("shapes_fine", config=FineShapesOptions)
def shapes_fine(
    root: str | None = None, split: str = "train", limit: int | None = None, size: int = 32, num_classes: int = 8
) -> ImageSource:
    """Fine-grained shapes: classes differ only in two small marks (train 3,000 / val 600 / test 900)."""
    images, labels, masks = _generated("fine", *_split("shapes_fine", FINE_SPLITS, split), size, num_classes)
    return ArraySource(images[:limit], labels[:limit], FINE_CLASSES[:num_classes], masks[:limit])


@DATASETS.register("shapes_scenes", config=SceneOptions)
def shapes_scenes(
    root: str | None = None, split: str = "train", limit: int | None = None, size: int = 32, max_objects: int = 4
) -> ImageSource:
    """Multi-object shape scenes with per-pixel masks (train 3,000 / val 600 / test 600)."""
    images, labels, masks = _generated("scenes", *_split("shapes_scenes", SCENE_SPLITS, split), size, max_objects)
    return ArraySource(images[:limit], labels[:limit], SHAPE_CLASSES, masks[:limit])
