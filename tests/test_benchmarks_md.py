"""BENCHMARKS.md is generated from the benchmark JSON: rows become tables, missing results say so."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("make_benchmarks_md", REPO / "benchmarks" / "make_benchmarks_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_become_tables_and_missing_results_name_their_command(tmp_path):
    make = _generator()
    results = tmp_path / "results"
    results.mkdir()
    record = {
        "command": "python benchmarks/scale_benchmark.py",
        "created": "2026-11-30T07:08:23",
        "machine": {"cpus": 2, "load_average_at_start": [7.5, 8.0, 9.0]},
        "streaming": [{"workers": 0, "folder_img_s": 89.5, "shards_img_s": 83.3}, {"workers": 2, "folder_img_s": 136.0, "shards_img_s": 155.2}],
        "sharded_extraction": {"array_jobs": 4, "speedup": 1.3888, "identical": True},
    }
    (results / "scale_benchmark.json").write_text(json.dumps(record))
    text = make.build(results, tmp_path / "BENCHMARKS.md")
    assert "| workers | folder_img_s | shards_img_s |" in text
    assert "| 2 | 136 | 155.2 |" in text
    assert "| 4 | 1.389 | True |" in text
    assert "load average at start 7.5" in text
    assert "Not measured yet: `python benchmarks/objective_overhead.py --out benchmarks/results`" in text
    assert (tmp_path / "benchmarks" / "results" / "throughput_vs_workers.png").is_file()
    assert "search_speedup_vs_recall" not in text  # no search record, no figure

    search = [{"data": "clustered", "index": index, "param": param, "n": 1000, "queries": 10, "speedup": speedup,
               "recall@10": recall} for index, param, speedup, recall in
              [("flat", "", 1.0, 1.0), ("ivf", "nprobe=4", 9.0, 0.8), ("ivf", "nprobe=16", 3.0, 0.97)]]
    (results / "search_benchmark.json").write_text(json.dumps({"command": "python benchmarks/search_benchmark.py",
                                                              "search": search}))
    text = make.build(results, tmp_path / "BENCHMARKS.md")
    assert "![search speed-up against recall](benchmarks/results/search_speedup_vs_recall.png)" in text
    assert (tmp_path / "benchmarks" / "results" / "search_speedup_vs_recall.png").is_file()
