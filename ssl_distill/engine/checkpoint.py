"""Checkpoints: one file per save, written to a temporary name and renamed, so a crash while writing
leaves the previous checkpoint loadable. Files are `checkpoint_<step>.pt`, newest = highest step."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_distill.checkpoints import PATTERN, checkpoint_path, list_checkpoints, read_checkpoint

__all__ = ["PATTERN", "checkpoint_path", "list_checkpoints", "load_latest", "prune", "rng_state", "save_atomic", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain Python values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(payload: dict[str, Any], path: Path) -> Path:
    """torch.save to `<path>.tmp`, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_latest(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; an unreadable one is reported and the previous one used."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, read_checkpoint(path)
        except Exception as error:  # a damaged file must not stop a resume from an older one
            first_line = str(error).splitlines()[0] if str(error) else ""
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(error).__name__}: {first_line}", stacklevel=2)
    return None


def prune(folder: Path, keep: int) -> None:
    for path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
