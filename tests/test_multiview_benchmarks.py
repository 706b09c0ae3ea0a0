"""The MRDD and TIPS benchmarks end to end in their quick settings (the benchmarks themselves are not tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_mrdd_benchmark_scores_every_representation(tmp_path, monkeypatch):
    bench = _load("mrdd_benchmark", monkeypatch)
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "mrdd_benchmark.json").read_text())["rows"]
    assert [row["representation"] for row in rows] == [
        "MRDD consistent", "MRDD specific", "MRDD combined", "single-view VAE", "pixels (digit)"]
    for row in rows:
        assert all(0.0 <= row[k] <= 1.0 for k in ("acc", "linear_top1")) and row["n_val"] == bench.QUICK.limit


@pytest.mark.slow
def test_quick_tips_benchmark_scores_both_models(tmp_path, monkeypatch):
    bench = _load("tips_benchmark", monkeypatch)
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = {row["model"]: row for row in json.loads((tmp_path / "tips_benchmark.json").read_text())["rows"]}
    assert list(rows) == ["TIPS", "CLIP-only", "random init"]
    for name in ("TIPS", "CLIP-only"):
        assert all(math.isfinite(rows[name][k]) for k in ("zero_shot_top1", "noisy_i2t_r1", "synthetic_t2i_r1", "seg_miou"))
    assert "zero_shot_top1" not in rows["random init"] and math.isfinite(rows["random init"]["seg_miou"])
