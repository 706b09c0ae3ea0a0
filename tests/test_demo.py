"""The demo's table: every row, and a student/scratch comparison computed from runs on the same data, with
the same steps, model shape and target (tiny budget)."""

from __future__ import annotations

import json

import pytest

from ssl_distill import demo
from ssl_distill.config import load_config

from conftest import CONFIGS

TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "train.max_steps=3", "data.limit=64",
        "train.progress=false", "train.tensorboard=false", "monitor.every=0"]


@pytest.mark.slow
def test_demo_rows_and_a_like_for_like_comparison(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--eval-limit", "200", *TINY]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    rows = {row["backbone"]: row for row in summary["rows"]}
    assert list(rows) == ["MAE teacher", "DMAE student", "MAE student from scratch", "random init (student shape)", "raw pixels"]
    assert all(row["n (val)"] == 200 and 0 < row["kNN top-1"] <= 1 for row in rows.values())
    student, scratch = rows["DMAE student"], rows["MAE student from scratch"]
    assert student["steps"] == scratch["steps"] == 3 and student["images_per_s"] > 0 and scratch["train_s"] > 0
    diff = summary["distillation"]
    assert diff["knn_points"] == pytest.approx(100 * (student["kNN top-1"] - scratch["kNN top-1"]))
    assert diff["linear_points"] == pytest.approx(100 * (student["linear top-1"] - scratch["linear top-1"]))
    printed = capsys.readouterr().out
    assert "distillation: " in printed and "over the same student trained alone" in printed


def test_the_two_students_share_everything_but_the_teacher():
    student = load_config(CONFIGS / "dmae/tiny_mnist.yaml", ["objective.teacher.source=x", "objective.norm_pix_loss=true"])
    scratch = load_config(CONFIGS / "mae/tiny_mnist_student.yaml")
    for key in demo.LIKE_FOR_LIKE:
        assert demo._pick(student, key) == demo._pick(scratch, key), key
    assert scratch.objective.name == "mae" and student.objective.name == "dmae"
