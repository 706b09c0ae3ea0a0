"""The search benchmark end to end in its quick setting (the benchmark itself is not a test)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "search_benchmark.py"


@pytest.mark.slow
def test_quick_search_benchmark_writes_every_table(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("search_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "search_benchmark.json").read_text())
    rows = record["search"]
    assert {(row["data"], row["index"]) for row in rows} == {(d, k) for d in ("clustered", "random") for k in bench.SWEEP}
    for row in rows:
        assert 0.0 <= row["recall@10"] <= 1.0 and math.isfinite(row["query_s"]), row
        assert row["recall@10"] == 1.0 if row["index"] == "flat" else True
    assert [row["method"] for row in record["exact"]["rows"]] == ["faiss IndexFlatIP", "torch.mm + topk"]
    assert record["exact"]["gemm_gflops"] > 0 and record["knn_memory"]["n"] == bench.QUICK.n
