"""The demo's MAE recipe (configs/mae/tiny_mnist.yaml, shrunk to 64-d x 4 blocks) learns features that beat
a randomly initialised ViT of the same shape on bundled MNIST kNN and linear-probe accuracy."""

from __future__ import annotations

import pytest

from eval.api import evaluate
from ssl_distill.config import load_config
from ssl_distill.engine import train

from conftest import CONFIGS

SHAPE = {"embed_dim": 64, "depth": 4, "num_heads": 2}


@pytest.mark.slow
def test_trained_mae_beats_random_init(tmp_path):
    overrides = [f"model.{k}={v}" for k, v in SHAPE.items()]
    decoder = ["objective.decoder.dim=64", "objective.decoder.heads=2", "objective.decoder.depth=1"]
    cfg = load_config(
        CONFIGS / "mae/tiny_mnist.yaml",
        [*overrides, *decoder, "train.max_steps=600", f"run.out_dir={tmp_path}", "train.progress=false", "train.tensorboard=false"],
    )
    exported = train(cfg).exported
    trained = evaluate(exported, protocols=("knn", "linear"), overrides=["run.cache=false"])
    random = evaluate(exported, protocols=("knn", "linear"), overrides=["model.weights=none", "run.cache=false"])
    # measured: kNN 0.53 vs 0.42, linear 0.78 vs 0.71 (MNIST val, 1,000 images)
    assert trained["knn_top1"] > random["knn_top1"] + 0.05
    assert trained["linear_top1"] > random["linear_top1"] + 0.03
