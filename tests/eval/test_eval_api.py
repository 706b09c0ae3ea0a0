from eval.api import evaluate, format_results
from eval.config import load_eval_config

TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.weights=none"]


def test_evaluate_returns_the_benchmark_numbers(tmp_path):
    settings = [*TINY, "data.limit=500", f"run.cache_dir={tmp_path}", "segment.epochs=1"]
    scores = evaluate("vit_tiny_patch16_224", overrides=settings, out=tmp_path / "results")
    assert set(scores) == {"knn_top1", "knn_n", "linear_top1", "linear_n", "segment_miou", "segment_n", "seconds"}
    assert scores["knn_n"] == scores["linear_n"] == scores["segment_n"] == 500  # data.limit
    # even a random ViT's features beat chance (0.1) on digits by far; a shifted label map or broken
    # features would not (measured: kNN 0.34-0.41 over three init seeds, linear 0.46)
    assert scores["knn_top1"] > 0.2 and scores["linear_top1"] > 0.25
    assert 0.0 < scores["segment_miou"] < 1.0
    assert {p.name for p in (tmp_path / "results").glob("*.json")} == {
        "knn-mnist.json",
        "linear-mnist.json",
        "segment-shapes.json",
    }
    table = format_results({"random init": scores, "other": {**scores, "knn_top1": 0.5}})
    assert table.splitlines()[0].split("|")[1].strip() == "backbone"
    assert "random init" in table and "0.5000" in table


def test_dataset_yaml_takes_the_data_section(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "data:\n  name: folder\n  root: /data/images\n  split: train\n  transform: {name: mae}\n"
    )
    cfg = load_eval_config(str(config), ["data.limit=7"])
    assert (cfg.data.name, cfg.data.root, cfg.data.limit) == ("folder", "/data/images", 7)
