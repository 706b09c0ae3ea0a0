"""Checkpoint files: naming, listing, reading, atomic saving and pruning (shared by the trainer, teachers
and evaluation).

A run directory holds `checkpoints/checkpoint_<step>.pt` (complete files only: they are written to a
unique temporary name and renamed, so a crash while writing leaves the previous one loadable) and, once
training ends, `backbone.safetensors`. Newest = highest step.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_distill.files import atomic_path

PATTERN = re.compile(r"checkpoint_(\d+)\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"checkpoint_{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_run_path(path: Path) -> Path:
    """A run directory or checkpoint folder -> its exported backbone or newest checkpoint."""
    if not path.is_dir():
        return path
    if (path / "backbone.safetensors").is_file():
        return path / "backbone.safetensors"
    return newest_checkpoint(path)


def newest_checkpoint(path: Path) -> Path:
    """A run directory or checkpoint folder -> its newest checkpoint (FileNotFoundError if none)."""
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path}: no checkpoint_*.pt inside")
    return found[-1]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on CPU with weights_only=True (no code from the file is run)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_atomic(payload: dict[str, Any], path: Path) -> Path:
    """torch.save to a unique temporary name next to `path`, fsync, then rename over `path`."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
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
