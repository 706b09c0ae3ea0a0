"""benchmarks/gpu_throughput.py in its CPU smoke form: every row is timed, DMAE trains against the MAE teacher
the script builds, and the JSON holds what BENCHMARKS.md renders (the GPU figures come from a CUDA machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_quick_cpu_run_times_every_row(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: it imports objective_overhead
    spec = importlib.util.spec_from_file_location("gpu_throughput", BENCHMARKS / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    record = module.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_throughput.json").read_text()) == json.loads(json.dumps(record))
    rows = {row["row"]: row for row in record["rows"]}
    assert list(rows) == ["timm ViT-S/16 (64 px)", "timm ViT-S/16 (DINO's crops)", "DINO", "DMAE"]
    for row in rows.values():
        assert row["step_ms"] > 0 and row["peak_gib"] is None  # no CUDA: no device memory figure
        assert abs(row["images_per_s"] - 4 / (row["step_ms"] / 1000)) < 1e-6
    assert rows["timm ViT-S/16 (64 px)"]["time_vs_timm_224"] == 1.0
    assert record["setting"] == {"batch": 4, "steps": 2, "warmup": 1, "precision": "bf16", "img": 64, "local": 32,
                                 "n_local": 2, "quick": True}
