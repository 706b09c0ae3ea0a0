"""Evaluation must never be silently wrong (issue 10): stale caches, configs whose data sit in a `base:`,
reports of several backbones, split label maps, random weights nobody asked for, tiny splits, clipped k."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from digits_data import TIMM_TINY, write_digits

from eval.api import default_out_dir, run_protocol
from eval.cli import main
from eval.config import load_eval_config
from eval.linear import edge_of_grid
from eval.store import FeatureStore
from ssl_distill.backbones import export_backbone, load_backbone

RANDOM = [*TIMM_TINY, "model.weights=none"]
SIZES = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    return write_digits(tmp_path / "digits", {"train": 20, "val": 8})


@pytest.fixture
def backbone(tmp_path: Path) -> Path:
    """An exported tiny ViT (random weights) in a run-like folder."""
    torch.manual_seed(123)
    path = tmp_path / "run" / "backbone.safetensors"
    return export_backbone(load_backbone("vit_tiny_patch16_224", **SIZES), path)


def _knn(backbone, data: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "out"
    settings = [
        "run.progress=false",
        f"run.cache_dir={tmp_path / 'cache'}",
        "knn.ks=[5]",
        "knn.report_k=5",
        *extra,
    ]
    assert main(["knn", "--backbone", str(backbone), "--data", data, "--out", str(out), *settings]) == 0
    return json.loads(next(out.glob("knn-*.json")).read_text())


def test_moving_a_file_to_another_class_invalidates_the_cache(digits, backbone, tmp_path, capsys):
    first = _knn(backbone, f"folder:{digits}", tmp_path)
    assert _knn(backbone, f"folder:{digits}", tmp_path)["metrics"] == first["metrics"]
    assert "cache hit (" in capsys.readouterr().err
    # a user fixes 4 wrongly filed val images: class 3 -> class 8 (the root folder's mtime does not change)
    for image in sorted((digits / "val" / "3").iterdir())[:4]:
        shutil.move(image, digits / "val" / "8" / image.name)
    moved = _knn(backbone, f"folder:{digits}", tmp_path)
    hits = capsys.readouterr().err
    assert "features folder/train (cls, 200 samples): cache hit" in hits and "folder/val" not in hits
    confusion = torch.tensor(moved["details"]["confusion"])
    assert confusion.sum(1)[3] == 4 and confusion.sum(1)[8] == 12  # the labels follow the files
    uncached = _knn(backbone, f"folder:{digits}", tmp_path, "run.cache=false")
    assert moved["metrics"] == uncached["metrics"]


def test_a_class_missing_from_val_does_not_shift_the_labels(tmp_path, backbone):
    """The digits-style check: kNN on val with digit 3 absent equals kNN on full val minus digit 3."""
    full = write_digits(tmp_path / "full", {"train": 20, "val": 8})
    gap = write_digits(tmp_path / "gap", {"train": 20, "val": 8}, skip_val=(3,))
    settings = ["run.progress=false", "run.cache=false", "knn.ks=[5]", "knn.report_k=5"]
    with_gap, _ = run_protocol("knn", backbone, f"folder:{gap}", settings, write=False)
    complete, _ = run_protocol("knn", backbone, f"folder:{full}", settings, write=False)
    kept = torch.tensor(complete.details["confusion"])
    kept[3] = 0  # the same queries without digit 3
    shown = torch.tensor(with_gap.details["confusion"])
    assert with_gap.details["classes"][3] == "3" and torch.equal(shown, kept)


def test_csv_shorthand_gives_the_folder_numbers(digits, backbone, tmp_path):
    settings = ["run.progress=false", "run.cache=false", "knn.ks=[5]", "knn.report_k=5"]
    by_csv, _ = run_protocol("knn", backbone, f"csv:{digits / 'digits.csv'}", settings, write=False)
    by_folder, _ = run_protocol("knn", backbone, f"folder:{digits}", settings, write=False)
    assert by_csv.metrics == by_folder.metrics and by_csv.details["n"] == {"train": 200, "val": 80}


def test_a_training_config_with_its_data_in_a_base_evaluates_that_data(digits, tmp_path):
    (tmp_path / "base.yaml").write_text(
        f"data:\n  name: folder\n  root: {digits}\n  transform: {{name: mae}}\n"
    )
    (tmp_path / "train.yaml").write_text("base: base.yaml\nobjective:\n  name: mae\n")
    cfg = load_eval_config(str(tmp_path / "train.yaml"))
    assert (cfg.data.name, cfg.data.root) == ("folder", str(digits))
    (tmp_path / "nodata.yaml").write_text("objective:\n  name: mae\n")
    with pytest.raises(ValueError, match="no dataset in it"):
        load_eval_config(str(tmp_path / "nodata.yaml"))


def test_report_keeps_each_backbones_figures(tmp_path, capsys):
    root = tmp_path / "results"
    for seed in (0, 1):  # two random inits of one architecture, written to their own folders
        settings = [*RANDOM, f"model.seed={seed}", "data.limit=40", "run.progress=false", "run.cache=false"]
        run_protocol("knn", "vit_tiny_patch16_224", "shapes", settings, root / f"seed{seed}")
    assert main(["report", str(root)]) == 0
    markdown = (root / "report" / "report.md").read_text()
    figures = {p.name for p in (root / "report" / "figures").iterdir()}
    for seed in (0, 1):
        assert f"seed{seed}_knn-shapes.confusion.png" in figures
        section = markdown.split(f"seed {seed})")[-1].split("## ")[0]
        assert f"figures/seed{seed}_knn-shapes.confusion.png" in section
        assert f"figures/seed{1 - seed}_knn-shapes" not in section
    comparison = markdown.split("## Comparison")[1].split("## ")[0]
    assert (
        comparison.count("(random init, seed") == 2
        and "ssl-eval knn --backbone vit_tiny_patch16_224" in comparison
    )


def test_a_run_directory_is_a_backbone(backbone, tmp_path):
    run = backbone.parent
    (run / "config.yaml").write_text("# a run\n")
    record = _knn(run, "shapes", tmp_path, "data.limit=40")
    assert record["backbone_id"]["file"] == str(backbone.resolve())
    cfg = load_eval_config("shapes", [])
    assert default_out_dir(run, cfg) == run / "eval" and default_out_dir(backbone, cfg) == run / "eval"


def test_random_weights_only_when_asked_and_their_folders_name_the_sizes(backbone, tmp_path, capsys):
    args = ["knn", "--backbone", "vit_tiny_patch16_224", *TIMM_TINY, "run.progress=false", "data.limit=40"]
    assert main(args) == 2
    assert "no weights were given" in capsys.readouterr().err
    outs = {
        default_out_dir("vit_tiny_patch16_224", load_eval_config("mnist", [*RANDOM, f"model.embed_dim={d}"]))
        for d in (32, 64)
    }
    assert len(outs) == 2 and all("random-seed0" in str(p) and "img_size32" in str(p) for p in outs)
    settings = ["data.limit=40", "run.progress=false", "run.cache=false"]
    cfg = load_eval_config("shapes", [*settings, "model.weights=none"])
    trained = FeatureStore(backbone, load_eval_config("shapes", settings)).features("val")
    random = FeatureStore(backbone, cfg).features("val")
    again = FeatureStore(backbone, cfg).features("val")
    assert torch.equal(random.feats, again.feats) and not torch.allclose(random.feats, trained.feats)
    assert default_out_dir(backbone, cfg) == backbone.parent / "eval" / "random-init-seed0"


def test_n_is_printed_and_tiny_splits_and_clipped_k_are_warned(tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "knn",
        "--backbone",
        "vit_tiny_patch16_224",
        "--random-init",
        "--data",
        "shapes",
        "--out",
        str(out),
    ]
    assert main([*args, *TIMM_TINY, "data.limit=12", "run.progress=false", "run.cache=false"]) == 0
    printed = capsys.readouterr()
    assert "| bank | queries |" in printed.out.replace("  ", " ").replace("  ", " ") or "bank" in printed.out
    assert "n: train 12, val 12" in printed.out
    assert "only 12 samples" in printed.err and "clipped to 12" in printed.err
    record = json.loads((out / "knn-shapes.json").read_text())
    assert record["n"] == {"train": 12, "val": 12} and len(record["warnings"]) == 3  # 2 splits, 1 clip
    assert all(row["bank"] == 12 and row["queries"] == 12 for row in record["rows"])


def test_linear_grid_reaches_1e4_and_an_edge_optimum_is_warned(tmp_path):
    assert list(load_eval_config("mnist").linear.Cs) == [1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4]
    assert edge_of_grid([{"C": 1.0, "holdout_top1": 0.5}, {"C": 10.0, "holdout_top1": 0.7}], "C") == "largest"
    assert edge_of_grid([{"C": 1.0, "holdout_top1": 0.7}, {"C": 10.0, "holdout_top1": 0.7}], "C") is None
    settings = [*RANDOM, "data.limit=60", "run.progress=false", "run.cache=false", "linear.Cs=[1e-6,1.0]"]
    result, _ = run_protocol("linear", "vit_tiny_patch16_224", "shapes", settings, write=False)
    assert any("largest of linear.Cs" in w for w in result.details["warnings"])


def test_report_runs_the_missing_baselines(backbone, tmp_path):
    run = backbone.parent
    settings = [
        "data.limit=40",
        "run.progress=false",
        f"run.cache_dir={tmp_path / 'cache'}",
        "knn.ks=[5]",
        "knn.report_k=5",
    ]
    assert main(["knn", "--backbone", str(run), "--data", "shapes", *settings]) == 0
    assert main(["report", str(run), "report.baselines=true", "report.projection=pca"]) == 0
    rows = (run / "report" / "report.md").read_text().split("## Comparison")[1].split("## ")[0]
    kinds = [line.split("|")[4].strip() for line in rows.splitlines() if line.startswith("| knn")]
    assert sorted(kinds) == ["pixels", "random init", "trained"]
    pixels = json.loads((run / "baselines" / "pixels-32px" / "knn-shapes.json").read_text())
    assert pixels["n"] == {"train": 40, "val": 40} and pixels["config"]["model"]["img_size"] == 32
    assert (run / "eval" / "random-init-seed0" / "knn-shapes.json").is_file()
