"""Nearest-neighbour partner images (the "NNS" files of STEGO and CoTAP) and a dataset that serves them.

File layout (STEGO, Hamilton et al. ICLR 2022, `src/precompute_knns.py`; CoTAP's `data/nns/*.npz`): a
NumPy `.npz` with one array `nns` (N, k) of int64 dataset indices, row i = the k images most similar to
image i by cosine of L2-normalised, globally average-pooled backbone features, most similar first;
column 0 is the image itself. Named `nns_<model>_<dataset>_<split>_<crop>_<resolution>.npz`. `ssl-eval
knn-pairs` writes such a file from a backbone's features (feature extraction and search belong to the
evaluation package; this module only reads and writes the format, so training never imports it).

The `neighbors` dataset wraps another registered dataset with such a file: sample i is the wrapped
dataset's sample i, and `partner_index(i, seed)` is one of its neighbours 1..num_neighbors drawn uniformly
(STEGO's `num_neighbors`, default 7), so a view dataset can add views of a partner image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from ssl_distill.data.images import ImageSource, Sample, build_source
from ssl_distill.files import atomic_path
from ssl_distill.registry import DATASETS
from ssl_distill.schema import ranged

NNS_KEY = "nns"


def neighbors_filename(model: str, dataset: str, split: str, resolution: int, crop: str = "None") -> str:
    """STEGO's / CoTAP's file name, e.g. nns_vit_base_imagenet1k_train_None_224.npz."""
    return f"nns_{model}_{dataset}_{split}_{crop}_{resolution}.npz"


def write_neighbors(path: str | Path, nns: np.ndarray) -> Path:
    """Write (N, k) neighbour indices (column 0 = the image itself) as `<path>` with key 'nns', atomically."""
    nns = np.asarray(nns, dtype=np.int64)
    if nns.ndim != 2 or nns.shape[1] < 2:
        raise ValueError(f"neighbour indices must be (N, k >= 2), got shape {nns.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{NNS_KEY: nns})
    return path


def read_neighbors(path: str | Path, size: int | None = None) -> np.ndarray:
    """(N, k) int64 indices from an NNS file; with `size`, checks that it was made for N == size images."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"neighbour file not found: {path} (make one with `ssl-eval knn-pairs`)")
    with np.load(path) as data:
        if NNS_KEY not in data:
            raise ValueError(f"{path}: no '{NNS_KEY}' array (has {list(data.keys())})")
        nns = data[NNS_KEY].astype(np.int64)
    if nns.ndim != 2 or nns.shape[1] < 2:
        raise ValueError(f"{path}: '{NNS_KEY}' must be (N, k >= 2), got shape {nns.shape}")
    if size is not None and len(nns) != size:
        raise ValueError(f"{path}: made for {len(nns)} images, the dataset has {size} (same split and limit?)")
    if nns.min() < 0 or nns.max() >= len(nns):
        raise ValueError(f"{path}: indices outside [0, {len(nns)})")
    return nns


class NeighborSource(ImageSource):
    """A source plus its neighbour table: `sample(i)` as the source, `partner_index(i, seed)` a random neighbour."""

    def __init__(self, source: Any, nns: np.ndarray, num_neighbors: int) -> None:
        if not 1 <= num_neighbors < nns.shape[1]:
            raise ValueError(f"data.options.num_neighbors must lie in [1, {nns.shape[1] - 1}], got {num_neighbors}")
        self.source, self.nns, self.num_neighbors = source, nns, num_neighbors
        self.classes = tuple(getattr(source, "classes", ()))
        self.has_masks = bool(getattr(source, "has_masks", False))

    def __len__(self) -> int:
        return len(self.source)

    def sample(self, index: int) -> Sample:
        return self.source[index]

    def partner_index(self, index: int, seed: int) -> int:
        """Neighbour 1..num_neighbors of `index`, uniformly, drawn from `seed` (reproducible per sample)."""
        column = int(np.random.default_rng(seed).integers(1, self.num_neighbors + 1))
        return int(self.nns[index, column])


@dataclass
class NeighborsOptions:
    """`data.options` of `neighbors`: the wrapped dataset, its options, and the NNS file."""

    dataset: str = MISSING
    options: dict[str, Any] = field(default_factory=dict)
    file: str = MISSING
    num_neighbors: int = ranged(7, "[1, inf)")


@DATASETS.register("neighbors", config=NeighborsOptions)
def neighbors(
    root: str | None = None,
    split: str = "train",
    limit: int | None = None,
    dataset: str = MISSING,
    options: dict[str, Any] | None = None,
    file: str = MISSING,
    num_neighbors: int = 7,
) -> NeighborSource:
    """Dataset `dataset` (same root, split and limit) whose samples come with nearest-neighbour partners."""
    source = build_source(dataset, root, split, limit, **(options or {}))
    return NeighborSource(source, read_neighbors(file, len(source)), num_neighbors)
