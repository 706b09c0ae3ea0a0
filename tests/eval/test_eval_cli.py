import json

import pandas as pd
import pytest

from eval.cli import main
from eval.report import training_columns

TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.weights=none"]


def _args(tmp_path, *extra):
    return [*TINY, "data.limit=40", "run.progress=false", f"run.cache_dir={tmp_path / 'cache'}", *extra]


def test_knn_end_to_end_on_a_tiny_random_vit(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        [
            "knn",
            "--backbone",
            "vit_tiny_patch16_224",
            "--data",
            "shapes",
            "--out",
            str(out),
            *_args(tmp_path, "knn.ks=[5,10]"),
        ]
    )
    assert code == 0
    record = json.loads((out / "knn-shapes.json").read_text())
    assert record["protocol"] == "knn" and record["data"] == "shapes"
    assert record["config"]["knn"]["ks"] == [5, 10] and record["config"]["data"]["limit"] == 40
    confusion = record["details"]["confusion"]
    assert len(confusion) == 5 and sum(map(sum, confusion)) == record["details"]["queries"] == 40
    correct = sum(confusion[i][i] for i in range(5)) / 40
    assert record["metrics"]["top1"] == pytest.approx(correct) and "top1@5" in record["metrics"]
    assert (out / record["artifacts"]["sample"]).is_file()
    printed = capsys.readouterr().out
    assert "| k " in printed and "knn-shapes.json" in printed


def test_segment_then_report_with_training_curves(tmp_path):
    run_dir = tmp_path / "run"
    out = run_dir / "eval"
    assert (
        main(
            [
                "segment",
                "--backbone",
                "vit_tiny_patch16_224",
                "--out",
                str(out),
                *_args(tmp_path, "segment.epochs=1"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "knn",
                "--backbone",
                "vit_tiny_patch16_224",
                "--data",
                "shapes",
                "--out",
                str(out),
                *_args(tmp_path),
            ]
        )
        == 0
    )
    logged = {"step": [0, 1, 2, 3], "loss": [None, 2.0, 1.5, 1.2], "dino": [None, 1.0, 0.8, 0.7]}
    logged |= {"lr": [None, 1e-3, 2e-3, 3e-3], "momentum": [None, 0.99, 0.995, 1.0], "teacher_temp": [None, 0.04] * 2}
    logged |= {"grad_norm": [None, 3.0, 2.0, 1.0], "skipped_samples": [None, 0, 0, 1], "epoch": [0.0, 0.1, 0.2, 0.3]}
    logged |= {"monitor/knn_top1": [0.2, None, None, 0.4], "unused": [None] * 4}
    table = pd.DataFrame(logged)
    table.to_csv(run_dir / "metrics.csv", index=False)
    (run_dir / "run_stats.json").write_text('{"steps": 3, "train_seconds": 1.5, "images": 96, "images_per_s": 64.0}')
    assert training_columns(table) == [c for c in logged if c not in ("step", "epoch", "unused")]
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report" / "report.html").read_text()
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "segment" in markdown and "knn" in markdown and "<table>" in page
    assert "| 3     | 1.5000        | 96     | 64.0000      |" in markdown  # the run's wall time and images/s
    figures = {p.name for p in (run_dir / "report" / "figures").iterdir()}
    assert {
        "training-run.png",
        "eval_segment-shapes.overlays.png",
        "eval_knn-shapes.projection.png",
        "eval_knn-shapes.confusion.png",
    } <= figures
    assert all(f"figures/{name}" in page for name in figures)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(
    ("protocol", "settings", "stem", "metric"),
    [
        ("features", [], "features-shapes", "effective_rank/val"),
        ("linear", [], "linear-shapes", "top1"),
        ("linear", ["linear.head=torch", "linear.epochs=2"], "linear-shapes", "top1"),
        ("anomaly", ["anomaly.normal=[0,1]"], "anomaly-distance-shapes", "auroc"),
    ],
)
def test_protocols_write_their_json(tmp_path, cache, protocol, settings, stem, metric):
    args = [*TINY, "data.limit=40", "run.progress=false", f"run.cache_dir={cache}", *settings]
    assert (
        main(
            [
                protocol,
                "--backbone",
                "vit_tiny_patch16_224",
                "--data",
                "shapes",
                "--out",
                str(tmp_path),
                *args,
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / f"{stem}.json").read_text())
    assert record["protocol"] == protocol and metric in record["metrics"]


def test_retrieve_saves_and_reuses_its_gallery_index(tmp_path, cache):
    args = [*TINY, "data.limit=40", "run.progress=false", f"run.cache_dir={cache}", "--data", "shapes"]
    index = tmp_path / "gallery.faiss"
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        main(
            [
                "retrieve",
                "--backbone",
                "vit_tiny_patch16_224",
                "--out",
                str(first),
                *args,
                f"retrieve.save_index={index}",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "retrieve",
                "--backbone",
                "vit_tiny_patch16_224",
                "--out",
                str(second),
                *args,
                f"retrieve.load_index={index}",
            ]
        )
        == 0
    )
    metrics = [json.loads((out / "retrieve-shapes.json").read_text())["metrics"] for out in (first, second)]
    assert metrics[0] == metrics[1] and set(metrics[0]) == {"recall@1", "recall@5", "recall@10", "map"}


def test_bad_setting_is_a_clear_error(tmp_path, capsys):
    assert main(["knn", "--backbone", "vit_tiny_patch16_224", *_args(tmp_path, "knn.temprature=0.1")]) == 2
    assert "did you mean 'temperature'" in capsys.readouterr().err
    assert main(["knn", "--backbone", "vit_tiny_patch16_225", *_args(tmp_path)]) == 2
    assert "did you mean 'vit_tiny_patch16_224'" in capsys.readouterr().err
