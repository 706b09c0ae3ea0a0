"""The cluster, zero-shot and image-text retrieval protocols, and named representations (multi-view
encoders, the second class token)."""

from __future__ import annotations

import pytest
import torch

from eval.api import run_protocol
from eval.text_retrieve import recall_at_k
from eval.zeroshot import zero_shot_scores
from ssl_distill.backbones import MRDDEncoder, build_backbone
from ssl_distill.data import seeded_call

SETTINGS = ["data.limit=60", "run.progress=false", "run.cache=false", "cluster.runs=2"]


def _mrdd(specific: bool) -> MRDDEncoder:
    spec = {"img_size": 32, "in_chans": 1, "hidden_dim": 4, "ch_mult": [1, 2], "num_res_blocks": 1, "latent_ch": 2}
    return seeded_call(0, lambda: MRDDEncoder({**spec, "num_views": 2, "latent_dim": 6},
                                              [{**spec, "num_views": 1, "latent_dim": 3}] * 2 if specific else None))


def test_cluster_protocol_on_named_multiview_representations():
    backbone = _mrdd(specific=True).eval()
    shapes = {name: tuple(v.shape) for name, v in backbone.representations([torch.rand(2, 1, 32, 32)] * 2).items()}
    assert shapes == {"consistent": (2, 6), "specific": (2, 3), "combined": (2, 9)}
    for pooling in shapes:
        result, _ = run_protocol("cluster", backbone, "edge_digits", [*SETTINGS, f"cluster.pooling={pooling}"], write=False)
        assert {row["metric"] for row in result.rows} == {"acc", "nmi", "ari"}
        assert all(row["n"] == 60 and row["runs"] == 2 for row in result.rows)
        assert 0.0 <= result.metrics["acc"] <= 1.0 and result.details["k"] == 10
    linear, _ = run_protocol("linear", backbone, "edge_digits", [*SETTINGS, "linear.pooling=combined"], write=False)
    assert 0.0 <= linear.metrics["top1"] <= 1.0


def test_multiview_pooling_errors_name_what_is_available():
    with pytest.raises(ValueError, match="named representation"):
        run_protocol("cluster", _mrdd(specific=False), "edge_digits", SETTINGS, write=False)
    with pytest.raises(ValueError, match=r"pooling 'specific'.*\['consistent'\]"):
        run_protocol("cluster", _mrdd(specific=False), "edge_digits", [*SETTINGS, "cluster.pooling=specific"], write=False)


def test_second_class_token_is_a_named_representation():
    vit = seeded_call(0, lambda: build_backbone(
        {"kind": "vit", "img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}, reg_tokens=1))
    result, _ = run_protocol("knn", vit, "shapes", ["data.limit=40", "run.progress=false", "run.cache=false",
                                                    "knn.pooling=cls2", "knn.ks=[5]", "knn.report_k=5"], write=False)
    assert 0.0 <= result.metrics["top1"] <= 1.0


def test_zero_shot_scores_and_recall_on_hand_cases():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.1]])
    classes = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert zero_shot_scores(images, classes).argmax(1).tolist() == [0, 1, 1]
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    relevant = torch.tensor([[False, False, True], [True, False, False]])
    assert recall_at_k(similarity, relevant, [1, 2, 3]) == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0}
