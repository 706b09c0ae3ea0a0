"""Retrieval: queries ranked against a gallery by cosine similarity (faiss); an item is relevant when it
shares the query's label. Recall@k is the fraction of queries with a relevant item in their top k;
AP averages precision at the rank of each relevant item, over min(relevant items, ranked depth).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
from omegaconf import DictConfig
from torch import Tensor

from eval.results import Result
from eval.search import (
    GPU_MAX_K,
    IndexSpec,
    build_index,
    describe,
    gpu_available,
    load_index,
    measured_recall,
    normalized,
    save_index,
    search,
)
from eval.store import FeatureStore


def ranking_metrics(
    ranked_labels: np.ndarray, query_labels: np.ndarray, relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """ranked_labels (M, K) gallery labels best first, query_labels (M,), relevant (M,) relevant items in the
    whole gallery -> per-query 'recall@k' (0/1) and 'ap' (NaN where nothing is relevant)."""
    hits = ranked_labels == query_labels[:, None]
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    depth = np.minimum(relevant, hits.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(depth > 0, (precision * hits).sum(1) / depth, np.nan)
    per_query = {f"recall@{k}": hits[:, :k].any(1).astype(float) for k in ks}
    per_query["ap"] = ap
    return per_query


def retrieve(
    index: faiss.Index,
    gallery_labels: np.ndarray,
    queries: Tensor | np.ndarray,
    query_labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    map_k: int | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Search a gallery index of normalised features -> mean recall@k and mAP (@map_k, or full ranking).
    An id of -1 (an approximate index found fewer than the depth) is never relevant."""
    depth = min(max(max(ks), map_k or index.ntotal), index.ntotal)
    relevant_per_label = np.bincount(
        gallery_labels, minlength=int(max(gallery_labels.max(), query_labels.max())) + 1
    )
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(queries), chunk_size):
        labels = query_labels[start : start + chunk_size]
        _, ids = search(index, normalized(queries[start : start + chunk_size]), depth, chunk_size)
        ranked = np.where(ids >= 0, gallery_labels[ids], np.iinfo(np.int64).min)
        scored = ranking_metrics(ranked, labels, relevant_per_label[labels], ks)
        for name, values in scored.items():
            parts.setdefault(name, []).append(values)
    metrics = {
        name: float(np.nanmean(np.concatenate(values))) for name, values in parts.items() if name != "ap"
    }
    metrics["map" if map_k is None else f"map@{map_k}"] = float(np.nanmean(np.concatenate(parts["ap"])))
    return metrics


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.retrieve
    queries = store.features(c.query_split, c.pooling)
    details: dict = {"queries": len(queries)}
    if c.load_index is not None:
        index = load_index(c.load_index, gpu=False)
        gallery_labels = np.load(f"{c.load_index}.labels.npy")
        if index.d != queries.feats.shape[1]:
            raise ValueError(
                f"retrieve.load_index={c.load_index} holds {index.d}-d vectors, the backbone gives {queries.feats.shape[1]}"
            )
        details["index"] = {"loaded": str(Path(c.load_index).resolve()), **describe(index)}
    else:
        if c.index != "flat" and c.map_k is None:
            raise ValueError(
                f"retrieve.index={c.index} ranks only the candidates it finds: set retrieve.map_k (e.g. 100)"
            )
        gallery = store.features(c.gallery_split, c.pooling)
        gallery_labels = gallery.labels.numpy()
        gpu = gpu_available() and (c.map_k or len(gallery)) <= GPU_MAX_K
        start = time.perf_counter()
        index = build_index(gallery.feats, "ip", gpu=gpu, spec=IndexSpec.from_config(c), normalize=True)
        built = time.perf_counter() - start
        searched = measured_recall(index, gallery.feats, queries.feats, max(c.ks), c.recall_queries, normalize=True)
        details["index"] = {"setting": c.index, **searched, "build_seconds": round(built, 3)}
    if c.save_index is not None:
        save_index(index, c.save_index)
        np.save(f"{c.save_index}.labels.npy", gallery_labels)
        details["saved_index"] = str(Path(c.save_index).resolve())
    metrics = retrieve(
        index, gallery_labels, queries.feats, queries.labels.numpy(), c.ks, c.map_k, c.chunk_size
    )
    details.update(gallery_size=int(index.ntotal), depth=min(c.map_k or index.ntotal, index.ntotal))
    if c.load_index is None and c.index != "flat":  # beside the scores: how exact the neighbours were
        metrics[f"index_recall@{max(c.ks)}"] = details["index"][f"recall@{max(c.ks)}"]
    row = {"gallery": int(index.ntotal), "queries": len(queries), **metrics}
    return Result("retrieve", metrics, [row], details)
