"""Smoke check of benchmarks/objective_overhead.py --quick: a row for every registered objective."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from ssl_distill.registry import OBJECTIVES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "objective_overhead.py"
spec = importlib.util.spec_from_file_location("objective_overhead", SCRIPT)
objective_overhead = importlib.util.module_from_spec(spec)
sys.modules["objective_overhead"] = objective_overhead  # its dataclasses look their module up
spec.loader.exec_module(objective_overhead)


@pytest.mark.slow
def test_quick_run_has_a_finite_ratio_for_every_registered_objective(tmp_path):
    objective_overhead.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "objective_overhead.json").read_text())
    rows = result["rows"]
    assert {row["objective"].split(" ")[0] for row in rows} == set(OBJECTIVES.names())
    for row in rows:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["step_ms"] > 0 and row["reference_ms"] > 0, row
        assert row["target_met"] == (row["ratio"] <= objective_overhead.TARGET)
        assert ("profile_top_ops" in row) == (not row["target_met"])
    assert [row["objective"] for row in result["partial_teachers"]] == ["dmae", "g2sd"]
    assert all(row["loss_allclose"] and row["teacher_speedup"] > 0 for row in result["partial_teachers"])
    assert {"platform", "cpus", "load_average_start", "load_average_end", "torch", "threads"} <= set(result["machine"])


def test_a_registered_objective_without_a_row_stops_the_script(monkeypatch):
    monkeypatch.setattr(objective_overhead, "CASES", [c for c in objective_overhead.CASES if c.objective != "dino"])
    with pytest.raises(RuntimeError, match=r"without an overhead row.*\['dino'\]"):
        objective_overhead.check_coverage()
