"""Protocol results: the JSON record each run writes, side arrays for the report, and plain tables."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_distill.files import atomic_path, write_text_atomic

SCHEMA = "ssl_eval/1"


@dataclass
class Result:
    """metrics: flat name -> number; rows: the table printed for the user; details: JSON-able extras
    (confusion matrix, per-class scores); arrays: side files, name -> arrays saved as `<stem>.<name>.npz`."""

    protocol: str
    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_result(result: Result, out_dir: str | Path, stem: str, header: Mapping[str, Any]) -> Path:
    """Write `<out_dir>/<stem>.json` (header + metrics + details) and its side arrays; atomic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    for name, arrays in result.arrays.items():
        path = out_dir / f"{stem}.{name}.npz"
        with atomic_path(path, fsync=False) as tmp:
            np.savez_compressed(tmp, **arrays)
        artifacts[name] = path.name
    record = {
        "schema": SCHEMA,
        "protocol": result.protocol,
        **header,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "metrics": result.metrics,
        "rows": result.rows,
        "details": result.details,
        "artifacts": artifacts,
    }
    return write_text_atomic(out_dir / f"{stem}.json", json.dumps(_json_safe(record), indent=2))


def read_results(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every result JSON under `root` (recursively), oldest first."""
    found = []
    for path in sorted(Path(root).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("schema") == SCHEMA:
            found.append((path, record))
    return sorted(found, key=lambda item: item[1].get("created", ""))


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts -> a Markdown pipe table with aligned columns (floats to 4 decimals)."""
    if not rows:
        return ""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    cells = [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in cells]
    return "\n".join(lines)
