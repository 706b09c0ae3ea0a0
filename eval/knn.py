"""Weighted k-nearest-neighbour classification (DINO's protocol) with faiss.

Bank and queries are L2-normalised; each of a query's k nearest bank samples votes for its label with
weight exp(sim / T) (`ssl_distill.knn.weighted_vote`, shared with the training monitor). One search with
the largest k serves every k.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from eval.metrics import classification_metrics, confusion, ranks_kept
from eval.results import Result
from eval.search import IndexSpec, build_index, measured_recall, normalized, search
from ssl_distill.knn import weighted_vote

if TYPE_CHECKING:  # kept out of the import so that `import eval.knn` loads neither torchvision nor timm
    import faiss
    from omegaconf import DictConfig

    from eval.extract import Features
    from eval.store import FeatureStore

__all__ = ["knn_rank", "num_classes_of", "run", "weighted_vote"]


def knn_rank(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    ks: Sequence[int],
    num_classes: int,
    temperature: float = 0.07,
    chunk_size: int = 4096,
    index: faiss.Index | None = None,
) -> dict[int, np.ndarray]:
    """For each k (clipped to the bank size): classes ranked by weighted vote, (M, r) best first
    (r = 5 when C > 5, else 1).

    `index` searches the L2-normalised bank (default: an exact flat index built here). The bank is
    normalised into the index and the queries searched and voted `chunk_size` at a time, so memory holds
    the bank, one index and one chunk.
    """
    ks = sorted({min(int(k), len(bank)) for k in ks})
    index = index if index is not None else build_index(bank, "ip", normalize=True)
    bank_labels = torch.as_tensor(bank_labels, dtype=torch.int64)
    keep = ranks_kept(num_classes)
    ranked: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for start in range(0, len(queries), chunk_size):
        sims, ids = search(index, normalized(queries[start : start + chunk_size]), max(ks), chunk_size)
        found = torch.from_numpy(ids) >= 0  # an approximate index may find fewer than k
        neighbor_labels = bank_labels[torch.from_numpy(ids).clamp_min(0)]
        sims_t = torch.from_numpy(sims).masked_fill(~found, -torch.inf)
        for k in ks:
            scores = weighted_vote(sims_t[:, :k], neighbor_labels[:, :k], num_classes, temperature)
            ranked[k].append(torch.topk(scores, keep, dim=1).indices.numpy())
    return {
        k: np.concatenate(parts) if parts else np.zeros((0, keep), np.int64) for k, parts in ranked.items()
    }


def num_classes_of(*sets: Features) -> int:
    return max(max(s.num_classes, int(s.labels.max()) + 1 if len(s) else 0) for s in sets)


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    from eval.features import projection_sample

    c = cfg.knn
    bank = store.features(c.bank_split, c.pooling)
    queries = store.features(c.query_split, c.pooling)
    num_classes = num_classes_of(bank, queries)
    headline = min(c.report_k, len(bank))
    clipped = sorted({int(k) for k in [*c.ks, c.report_k] if k > len(bank)})
    if clipped:
        store.warn(f"knn: k={clipped} exceed the bank of {len(bank)} samples and were clipped to {len(bank)}")
    start = time.perf_counter()
    index = build_index(bank.feats, "ip", spec=IndexSpec.from_config(c), normalize=True)
    built = time.perf_counter() - start
    ranked = knn_rank(
        bank.feats, bank.labels, queries.feats, [*c.ks, headline], num_classes, c.temperature, c.chunk_size, index
    )
    labels = queries.labels.numpy()
    rows, metrics = [], {}
    for k, ranks in ranked.items():
        scores = classification_metrics(labels, ranks)
        rows.append({"k": k, "bank": len(bank), "queries": len(queries), **scores})
        metrics.update({f"{name}@{k}": value for name, value in scores.items()})
    metrics.update(classification_metrics(labels, ranked[headline]))
    searched = measured_recall(index, bank.feats, queries.feats, headline, c.recall_queries, normalize=True)
    if c.index != "flat":  # beside the scores: how exact the neighbours were
        metrics[f"index_recall@{headline}"] = searched[f"recall@{headline}"]
        rows = [{**row, f"index_recall@{headline}": searched[f"recall@{headline}"]} for row in rows]
    details = {
        "k": headline,
        "temperature": c.temperature,
        "bank_size": len(bank),
        "queries": len(queries),
        "index": {"setting": c.index, **searched, "build_seconds": round(built, 3)},
        "classes": list(queries.classes),
        "confusion": confusion(labels, ranked[headline][:, 0], num_classes),
    }
    return Result("knn", metrics, rows, details, {"sample": projection_sample(queries, c.sample)})
