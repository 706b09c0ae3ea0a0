"""The loader benchmark end to end in its quick setting (the benchmark itself is not a test; nothing
here is timed)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.data.video import VideoClipDataset

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "loader_benchmark.py"


def _load_benchmark(monkeypatch):
    spec = importlib.util.spec_from_file_location("loader_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_every_section(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_DISTILL_CACHE", str(tmp_path / "cache"))
    bench = _load_benchmark(monkeypatch)
    assert bench.main(["--quick", "--out", str(tmp_path / "out")]) == 0
    sections = json.loads((tmp_path / "out" / "loader_benchmark.json").read_text())["sections"]
    loading = sections["clips_per_s"]
    assert [(row["sampling"], row["workers"]) for row in loading] == [
        (sampling, workers) for sampling in bench.SAMPLINGS for workers in bench.QUICK.workers
    ]
    assert [row["item"] for row in sections["seeding"]] == ["mnist mae", "mnist multicrop", "echo clip (tiny)"]
    for rows in sections.values():
        for row in rows:
            assert all(math.isfinite(v) and v > 0 for k, v in row.items() if isinstance(v, float) and "diff" not in k), row
    for row in sections["adamw"]:  # foreach makes the for-loop update exactly, fused to float rounding
        assert row["foreach max |diff|"] == 0.0 and row["fused max |diff|"] < 1e-6
    assert [row["objective"] for row in sections["consumption"]] == list(bench.CONSUMERS)


def test_the_compared_pipelines_read_the_same_clips(tmp_path, monkeypatch):
    """decord's frames are this code's (PyAV's), also when kept decord readers seek backwards, and
    the baseline's re-encoded copy has one keyframe per video and nearly the same frames."""
    bench = _load_benchmark(monkeypatch)
    root = write_synthetic_echo(tmp_path / "echo", 3, seed=2, size=32, frames=60)
    single = bench.one_keyframe_copy(root, tmp_path / "single")
    options = {"num_frames": 4, "stride": 3, "img_size": 32}
    now, decord = VideoClipDataset(root, **options), bench.DecordClips(root, **options)
    copy = bench.DecordClips(single, open_readers=0, **options)
    for entry, copied in zip(now.entries, copy.entries):
        assert list(bench.VideoReader(str(copied.path)).get_key_indices()) == [0]
        for start in (0, 20, 49, 3):
            for dataset in (now, decord, copy):
                dataset._starts = lambda total, s=start: torch.tensor([s])
            frames = now._read(entry)[0]
            assert np.array_equal(decord._read(entry)[0], frames)
            assert np.abs(copy._read(copied)[0].astype(int) - frames).mean() < 3
