"""The echo benchmark end to end in its quick setting (the benchmark itself is not a test)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "echo_benchmark.py"


def _load_benchmark(monkeypatch):
    spec = importlib.util.spec_from_file_location("echo_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_writes_every_row_and_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_DISTILL_CACHE", str(tmp_path / "cache"))
    bench = _load_benchmark(monkeypatch)
    assert bench.main(["--quick", "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "echo_benchmark.json").read_text())
    rows = {row["model"]: row for row in record["rows"]}
    assert list(rows) == [*bench.METHODS, *bench.RANDOM_ROWS]
    for row in rows.values():
        for metric in bench.METRICS:
            assert math.isfinite(row[metric]), (row["model"], metric, row[metric])
    assert [rows[m]["steps"] for m in bench.METHODS] == [bench.QUICK.steps] * 3
    assert record["videos_per_split"] == {"train": 12, "val": 2, "test": 2}
