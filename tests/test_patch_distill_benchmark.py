"""The patch-distillation benchmark end to end in its quick setting (the benchmark itself is not a test)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "patch_distill_benchmark.py"


def _load_benchmark(monkeypatch):
    spec = importlib.util.spec_from_file_location("patch_distill_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("part", ["cmd", "cotap"])
def test_quick_benchmark_writes_every_row_and_metric(tmp_path, monkeypatch, part):
    bench = _load_benchmark(monkeypatch)
    assert bench.main(["--part", part, "--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / f"patch_distill_{part}.json").read_text())
    rows = record["rows"]
    metrics = [c for c in bench.COLUMNS[part] if c not in ("model", "pooling", "steps", "train_cpu_s", "n")]
    assert all(math.isfinite(row[m]) for row in rows for m in metrics)
    if part == "cmd":
        assert [(r["model"], r["pooling"]) for r in rows] == [
            (m, p) for m in ("DINO", "CMD", "random init") for p in ("cls", "mean")
        ]
        assert rows[0]["steps"] == rows[2]["steps"] == bench.QUICK.steps
    else:
        assert [r["steps"] for r in rows] == [0, 3, 5, 5] and record["neighbours"]["images"] == bench.QUICK.limit
        assert Path(record["neighbours"]["file"]).is_file()
