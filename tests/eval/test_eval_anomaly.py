import math

import numpy as np
import torch
from omegaconf import OmegaConf

from eval import anomaly
from eval.config import EvalConfig
from eval.extract import Features


def test_knn_distance_score_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    scores = anomaly.knn_distance_scores(bank, torch.tensor([[2.0, 0.0]]), k=2)
    assert abs(scores[0] - (0.0 + math.sqrt(2)) / 2) < 1e-6  # distances 0 and sqrt(2) after normalising


def test_distance_auroc_is_high_on_a_separable_case():
    generator = torch.Generator().manual_seed(0)
    normal_center, abnormal_center = torch.randn(2, 32, generator=generator)
    bank = normal_center + 0.3 * torch.randn(200, 32, generator=generator)
    queries = torch.cat(
        [normal_center + 0.3 * torch.randn(50, 32), abnormal_center + 0.3 * torch.randn(50, 32)]
    )
    abnormal = np.r_[np.zeros(50, bool), np.ones(50, bool)]
    metrics = anomaly.detection_metrics(abnormal, anomaly.knn_distance_scores(bank, queries, k=5))
    assert metrics["auroc"] > 0.99
    assert (
        anomaly.detection_metrics(abnormal, -anomaly.knn_distance_scores(bank, queries, k=5))["auroc"] < 0.01
    )


class _Store:
    """Stands in for FeatureStore: splits of two separable classes, records which splits were read."""

    def __init__(self):
        self.read = []
        generator = torch.Generator().manual_seed(1)
        self.centers = torch.randn(3, 16, generator=generator)

    def features(self, split, pooling):
        self.read.append(split)
        labels = torch.arange(60) % 3
        feats = self.centers[labels] + 0.2 * torch.randn(60, 16)
        return Features(
            feats, labels, torch.full((60,), math.nan), None, (4, 4), ("normal", "mild", "severe")
        )


def test_zero_shot_uses_val_as_bank_and_test_as_queries():
    cfg = OmegaConf.structured(EvalConfig)
    cfg.anomaly.method, cfg.anomaly.binarize = "zero_shot", True
    store = _Store()
    result = anomaly.run(store, cfg)
    assert store.read == ["val", "test"]
    assert result.metrics["accuracy"] == 1.0 and result.metrics["balanced_accuracy"] == 1.0
    assert np.asarray(result.details["confusion"]).shape == (2, 2)  # normal vs abnormal
    cfg.anomaly.method = "distance"
    assert anomaly.run(_Store(), cfg).metrics["auroc"] > 0.99
