"""Evaluation protocols launch through submitit like training (here its local executor)."""

from __future__ import annotations

import json

import pytest

from eval.cli import main

TINY = ["model.img_size=32", "model.patch_size=4", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.weights=none"]


@pytest.mark.slow
def test_knn_runs_as_a_local_submitit_job(tmp_path, capsys):
    code = main(["knn", "--backbone", "vit_tiny_patch16_224", "--local", "--out", str(tmp_path), *TINY, "data.limit=120", "knn.ks=[5]", "knn.report_k=5"])
    assert code == 0
    assert "submitted job" in capsys.readouterr().out
    written = json.loads((tmp_path / "knn-mnist.json").read_text())
    assert written["details"]["queries"] == 120 and written["metrics"]["top1"] > 0.2  # chance is 0.1
    assert list((tmp_path / "submitit").glob("*_result.pkl"))
