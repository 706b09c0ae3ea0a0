"""Finding and reading checkpoints (shared by the trainer, teachers and evaluation).

A run directory holds `checkpoints/checkpoint_<step>.pt` (complete files only: they are written to a
temporary name and renamed) and, once training ends, `backbone.safetensors`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

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
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path}: no backbone.safetensors and no checkpoint_*.pt inside")
    return found[-1]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on CPU with weights_only=True (no code from the file is run)."""
    return torch.load(path, map_location="cpu", weights_only=True)
