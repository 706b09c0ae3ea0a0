"""Features on disk as memory-mapped .npy slices, joined into one memory-mapped set per cache key.

Under `<cache_dir>/<key digest>/` (the key of `FeatureStore.key`: backbone identity, data, adapter,
pooling): `slices/slice-<i>-of-<n>.{feats,labels,targets[,masks]}.npy` plus `slice-<i>-of-<n>.json`
(written last) while slices are extracted; then `feats.npy`, `labels.npy`, `targets.npy`[, `masks.npy`]
and `manifest.json` (count, shape, dtype, grid, classes, backbone identity, data key, slice bounds) once
they are joined, and the slices are removed. Every file is written under a temporary name and renamed;
a slice or set is used only when its manifest holds the same key, bounds and shapes.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.extract import Features

FORMAT = "ssl_eval.slices/1"
ROWS = 65536  # rows copied at a time when joining


def _plain(key: dict[str, Any]) -> Any:
    return json.loads(json.dumps(key, default=str))


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _write_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
    out[:] = array
    out.flush()
    del out
    tmp.replace(path)


def _arrays(features: Features) -> dict[str, np.ndarray]:
    arrays = {"feats": features.feats, "labels": features.labels, "targets": features.targets, "masks": features.masks}
    return {name: value.numpy() for name, value in arrays.items() if value is not None}


class SliceSet:
    """The slices and the joined set of one cache key in `folder`; `bounds` are the (start, stop) of each slice."""

    def __init__(self, folder: str | Path, key: dict[str, Any], bounds: list[tuple[int, int]]) -> None:
        self.folder, self.key, self.bounds = Path(folder), _plain(key), bounds

    def _slice(self, index: int) -> Path:
        return self.folder / "slices" / f"slice-{index:05d}-of-{len(self.bounds):05d}"

    def slice_valid(self, index: int) -> bool:
        """Slice `index` is on disk for this key and these bounds (a stale or partial one is not)."""
        stem = self._slice(index)
        try:
            record = json.loads(stem.with_suffix(".json").read_text())
            shapes = {name: np.load(f"{stem}.{name}.npy", mmap_mode="r").shape for name in record["arrays"]}
        except (OSError, ValueError, KeyError):
            return False
        start, stop = self.bounds[index]
        return (
            record.get("key") == self.key
            and (record["start"], record["stop"]) == (start, stop)
            and all(shape[0] == record["count"] for shape in shapes.values())
        )

    def missing(self) -> list[int]:
        return [index for index in range(len(self.bounds)) if not self.slice_valid(index)]

    def write_slice(self, index: int, features: Features) -> None:
        stem = self._slice(index)
        stem.parent.mkdir(parents=True, exist_ok=True)
        arrays = _arrays(features)
        for name, array in arrays.items():
            _write_array(Path(f"{stem}.{name}.npy"), array)
        start, stop = self.bounds[index]
        _write_json(
            stem.with_suffix(".json"),
            {
                "key": self.key, "start": start, "stop": stop, "count": len(features),
                "shape": list(features.feats.shape), "dtype": str(arrays["feats"].dtype),
                "grid": list(features.grid), "classes": list(features.classes), "arrays": sorted(arrays),
            },
        )

    def join(self) -> Path:
        """Concatenate the slices (all valid) into the joined set, `ROWS` rows at a time; remove the slices."""
        if missing := self.missing():
            raise RuntimeError(f"slices {missing} of {len(self.bounds)} in {self.folder} are missing or stale")
        records = [json.loads(self._slice(i).with_suffix(".json").read_text()) for i in range(len(self.bounds))]
        count = sum(record["count"] for record in records)
        for name in records[0]["arrays"]:
            parts = [np.load(f"{self._slice(i)}.{name}.npy", mmap_mode="r") for i in range(len(records))]
            tmp = self.folder / f".{name}.{uuid.uuid4().hex}.tmp"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=parts[0].dtype, shape=(count, *parts[0].shape[1:]))
            row = 0
            for part in parts:
                for start in range(0, len(part), ROWS):
                    chunk = part[start : start + ROWS]
                    out[row : row + len(chunk)] = chunk
                    row += len(chunk)
            out.flush()
            del out, parts
            tmp.replace(self.folder / f"{name}.npy")
        _write_json(
            self.folder / "manifest.json",
            {
                "format": FORMAT, "key": self.key, "count": count,
                "shape": [count, *records[0]["shape"][1:]], "dtype": records[0]["dtype"],
                "grid": records[0]["grid"], "classes": records[0]["classes"], "arrays": records[0]["arrays"],
                "backbone": self.key["backbone"], "data": self.key["data"], "slices": self.bounds,
                "skipped": sum(stop - start for start, stop in self.bounds) - count,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        shutil.rmtree(self.folder / "slices", ignore_errors=True)
        return self.folder


def load_joined(folder: str | Path, key: dict[str, Any]) -> Features | None:
    """The joined set of `key` in `folder` as memory-mapped tensors (copy-on-write: nothing is read until
    used, and nothing is written back), or None when it is absent or belongs to another key."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "manifest.json").read_text())
        if record.get("format") != FORMAT or record.get("key") != _plain(key):
            return None
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="c") for name in record["arrays"]}
    except (OSError, ValueError, KeyError):
        return None
    if list(arrays["feats"].shape) != record["shape"]:
        return None
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    return Features(
        feats=tensors["feats"], labels=tensors["labels"], targets=tensors["targets"], masks=tensors.get("masks"),
        grid=tuple(record["grid"]), classes=tuple(record["classes"]),
    )
