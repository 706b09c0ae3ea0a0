"""The `features` protocol: extract (or load) and cache each split's features, report their shapes and
collapse indicators; and the feature samples other protocols keep for the report's projections."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from eval.extract import Features
from eval.results import Result
from eval.store import FeatureStore


def projection_sample(features: Features, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Up to `size` pooled features with their labels (and class names), for the report's 2-D projection."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(features), size=min(size, len(features)), replace=False))
    return {
        "feats": features.feats[chosen].float().numpy(),
        "labels": features.labels[chosen].numpy(),
        "classes": np.array(features.classes, dtype=str),
    }


def feature_statistics(feats: Tensor) -> dict[str, float]:
    """(N, D) -> collapse indicators: mean per-dimension std of normalised features (1/sqrt(D) when
    spread out, 0 when collapsed), RankMe effective rank exp(entropy of normalised singular values), norm."""
    feats = feats.float()
    unit = torch.nn.functional.normalize(feats, dim=1)
    singular = torch.linalg.svdvals(feats - feats.mean(0))
    p = singular / singular.sum().clamp_min(1e-12) + 1e-12
    return {
        "normalized_std": float(unit.std(0).mean()),
        "effective_rank": float(torch.exp(-(p * p.log()).sum())),
        "mean_norm": float(feats.norm(dim=1).mean()),
    }


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    """Extract (or load) and cache features of each split; report their shapes and collapse indicators."""
    c = cfg.features
    rows, metrics, arrays = [], {}, {}
    for split in c.splits:
        features = store.features(split, c.pooling)
        if c.pooling == "patch":
            features = replace(features, feats=features.feats.float().mean(1))
        stats = feature_statistics(features.feats)
        rows.append({"split": split, "samples": len(features), "dim": features.feats.shape[1], **stats})
        metrics.update({f"{name}/{split}": float(value) for name, value in stats.items()})
        arrays.setdefault("sample", projection_sample(features, c.sample))
    return Result("features", metrics, rows, {"pooling": c.pooling, "cache": dict(store.used)}, arrays)
