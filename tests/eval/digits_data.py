"""Data nobody here trains on: scikit-learn's bundled 8x8 digits written as an ImageFolder tree and as a CSV,
the way a new user brings their own images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TIMM_TINY = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
]


def write_digits(root: Path, per_class: dict[str, int], skip_val: tuple[int, ...] = ()) -> Path:
    """root/<split>/<digit>/<i>.png from sklearn's digits (first images of each digit to train, next to val),
    and root/digits.csv (path,label,split) listing the same files; classes in `skip_val` get no val images."""
    digits = load_digits()
    rows = []
    for digit in range(10):
        members = np.flatnonzero(digits.target == digit)
        start = 0
        for split, count in per_class.items():
            chosen = members[start : start + count]
            start += count
            if split == "val" and digit in skip_val:
                continue
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
                path = folder / f"{index}.png"
                Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(path)
                rows.append({"path": str(path.relative_to(root)), "label": str(digit), "split": split})
    with open(root / "digits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root
