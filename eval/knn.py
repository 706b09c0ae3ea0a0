"""Weighted k-nearest-neighbour classification (DINO's protocol) with faiss.

Bank and queries are L2-normalised; each of a query's k nearest bank samples votes for its label with
weight exp(sim / T) (`ssl_distill.knn.weighted_vote`, shared with the training monitor). One search with
the largest k serves every k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from eval.extract import Features
from eval.features import projection_sample
from eval.metrics import classification_metrics, confusion, ranks_kept
from eval.results import Result
from eval.search import build_index, normalized, search
from eval.store import FeatureStore
from ssl_distill.knn import weighted_vote

__all__ = ["knn_rank", "num_classes_of", "run", "weighted_vote"]


def knn_rank(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    ks: Sequence[int],
    num_classes: int,
    temperature: float = 0.07,
    chunk_size: int = 4096,
) -> dict[int, np.ndarray]:
    """For each k (clipped to the bank size): classes ranked by weighted vote, (M, r) best first
    (r = 5 when C > 5, else 1).

    Queries go through faiss and the vote `chunk_size` at a time, so memory stays bounded.
    """
    ks = sorted({min(int(k), len(bank)) for k in ks})
    index = build_index(normalized(bank), metric="ip")
    bank_labels = torch.as_tensor(bank_labels, dtype=torch.int64)
    queries_np = normalized(queries)
    keep = ranks_kept(num_classes)
    ranked: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for start in range(0, len(queries_np), chunk_size):
        sims, ids = search(index, queries_np[start : start + chunk_size], max(ks), chunk_size)
        neighbor_labels = bank_labels[torch.from_numpy(ids)]
        sims_t = torch.from_numpy(sims)
        for k in ks:
            scores = weighted_vote(sims_t[:, :k], neighbor_labels[:, :k], num_classes, temperature)
            ranked[k].append(torch.topk(scores, keep, dim=1).indices.numpy())
    return {
        k: np.concatenate(parts) if parts else np.zeros((0, keep), np.int64) for k, parts in ranked.items()
    }


def num_classes_of(*sets: Features) -> int:
    return max(max(s.num_classes, int(s.labels.max()) + 1 if len(s) else 0) for s in sets)


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.knn
    bank = store.features(c.bank_split, c.pooling)
    queries = store.features(c.query_split, c.pooling)
    num_classes = num_classes_of(bank, queries)
    headline = min(c.report_k, len(bank))
    clipped = sorted({int(k) for k in [*c.ks, c.report_k] if k > len(bank)})
    if clipped:
        store.warn(f"knn: k={clipped} exceed the bank of {len(bank)} samples and were clipped to {len(bank)}")
    ranked = knn_rank(
        bank.feats, bank.labels, queries.feats, [*c.ks, headline], num_classes, c.temperature, c.chunk_size
    )
    labels = queries.labels.numpy()
    rows, metrics = [], {}
    for k, ranks in ranked.items():
        scores = classification_metrics(labels, ranks)
        rows.append({"k": k, "bank": len(bank), "queries": len(queries), **scores})
        metrics.update({f"{name}@{k}": value for name, value in scores.items()})
    metrics.update(classification_metrics(labels, ranked[headline]))
    details = {
        "k": headline,
        "temperature": c.temperature,
        "bank_size": len(bank),
        "queries": len(queries),
        "classes": list(queries.classes),
        "confusion": confusion(labels, ranked[headline][:, 0], num_classes),
    }
    return Result("knn", metrics, rows, details, {"sample": projection_sample(queries, c.sample)})
