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


def feature_statistics(feats: Tensor, chunk_size: int = 65536) -> dict[str, float]:
    """(N, D) -> collapse indicators: mean per-dimension std of normalised features (1/sqrt(D) when
    spread out, 0 when collapsed), RankMe effective rank exp(entropy of normalised singular values), norm.

    One pass over `chunk_size` rows at a time (float64 sums), so a memory-mapped bank is never held whole:
    the singular values of the centred features are the square roots of the eigenvalues of X'X - N m m'.
    """
    n, dim = feats.shape
    total, unit_sum, unit_squares = (torch.zeros(dim, dtype=torch.float64) for _ in range(3))
    gram, norms = torch.zeros(dim, dim, dtype=torch.float64), 0.0
    for start in range(0, n, chunk_size):
        chunk = feats[start : start + chunk_size].double()
        unit = torch.nn.functional.normalize(chunk, dim=1)
        total += chunk.sum(0)
        unit_sum += unit.sum(0)
        unit_squares += (unit**2).sum(0)
        gram += chunk.T @ chunk
        norms += float(chunk.norm(dim=1).sum())
    mean = total / n
    singular = torch.linalg.eigvalsh(gram - n * torch.outer(mean, mean)).clamp_min(0).sqrt()
    p = singular / singular.sum().clamp_min(1e-12) + 1e-12
    unit_var = (unit_squares - unit_sum**2 / n) / max(n - 1, 1)
    return {
        "normalized_std": float(unit_var.clamp_min(0).sqrt().mean()),
        "effective_rank": float(torch.exp(-(p * p.log()).sum())),
        "mean_norm": norms / n,
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
