"""Issue 15 end to end: shard MNIST -> train on the shards (2 workers) -> sharded features (2 local
submitit array jobs) -> IVF kNN with nprobe = nlist equal to exact kNN."""

from __future__ import annotations

import json

import pytest
import torch

from eval.cli import main as eval_main
from ssl_distill.cli import main
from ssl_distill.engine import train

from conftest import tiny_config


@pytest.mark.slow
def test_shard_train_sharded_features_and_ivf_knn(tmp_path):
    torch.set_num_threads(1)
    shards = tmp_path / "shards"
    assert main(["data", "shard", "mnist", str(shards / "train"), "--shard-size", "16", "--limit", "64"]) == 0
    assert main(["data", "shard", "mnist", str(shards / "val"), "--split", "val", "--shard-size", "16", "--limit", "32"]) == 0
    data = ["data.name=shards", f"data.root={shards}"]
    result = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "runs", *data, "data.num_workers=2", "train.max_steps=4"))
    assert result.steps == 4 and result.exported.is_file()

    settings = [*data, "data.batch_size=16", "run.progress=false", f"run.cache_dir={tmp_path / 'cache'}", "run.threads=1"]
    out = tmp_path / "eval"
    backbone = str(result.exported)
    assert eval_main(["features", "--backbone", backbone, "--out", str(out), *settings, "--shards", "2", "--local"]) == 0
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 2  # one array task per slice
    features = json.loads((out / "features-shards.json").read_text())
    assert all(json.loads((tmp_path / "cache" / path.split("/")[-1] / "manifest.json").read_text())["slices"]
               for path in features["features"].values())
    assert features["rows"][0]["samples"] == 64 and features["rows"][1]["samples"] == 32

    knn = ["knn", "--backbone", backbone, *settings, "knn.ks=[5,10]", "knn.report_k=10"]
    assert eval_main([*knn, "--out", str(out / "flat")]) == 0
    assert eval_main([*knn, "--out", str(out / "ivf"), "knn.index=ivf", "knn.nlist=4", "knn.nprobe=4"]) == 0
    flat, ivf = (json.loads((out / name / "knn-shards.json").read_text()) for name in ("flat", "ivf"))
    assert ivf["details"]["index"]["nlist"] == ivf["details"]["index"]["nprobe"] == 4
    assert ivf["metrics"]["index_recall@10"] == 1.0
    assert {k: v for k, v in ivf["metrics"].items() if not k.startswith("index_")} == flat["metrics"]
    assert ivf["details"]["confusion"] == flat["details"]["confusion"]
    assert ivf["features"] == flat["features"] == features["features"]  # the joined sharded features
