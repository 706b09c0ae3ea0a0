"""Retrieval: queries ranked against a gallery by cosine similarity (faiss); an item is relevant when it
shares the query's label. Recall@k is the fraction of queries with a relevant item in their top k;
AP averages precision at the rank of each relevant item, over min(relevant items, ranked depth).

Protocols (`retrieve.protocol`):
- `splits`: the queries are `query_split`, the gallery `gallery_split`.
- `cmd`: the fine-grained retrieval protocol of CMD (Bi et al., TIP 2025; github.com/BiQiWHU/CMD,
  `retrieval.py`, `split_mode='ratio'`): the queries are every `query_every`-th (9th) image of
  `query_split` (the test set), the gallery is all of `gallery_split` (train) plus the other
  `query_split` images; Rank-k is recall@k, and mAP is taken over the top `map_k` (default 100) with
  the released code's denominator: the relevant items found there (0 when none is).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from eval.extract import Features
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

AP_OVER = ("relevant", "retrieved")


def ranking_metrics(
    ranked_labels: np.ndarray,
    query_labels: np.ndarray,
    relevant: np.ndarray,
    ks: Sequence[int],
    ap_over: str = "relevant",
) -> dict[str, np.ndarray]:
    """ranked_labels (M, K) gallery labels best first, query_labels (M,), relevant (M,) relevant items in the
    whole gallery -> per-query 'recall@k' (0/1) and 'ap'. `ap_over='relevant'` divides the summed
    precisions by min(relevant, K) (NaN where nothing is relevant); 'retrieved' by the relevant items
    among the K ranked (0 where there are none: CMD's `retrieval.py`)."""
    if ap_over not in AP_OVER:
        raise ValueError(f"ap_over must be one of {AP_OVER}, got '{ap_over}'")
    hits = ranked_labels == query_labels[:, None]
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    if ap_over == "retrieved":
        found = hits.sum(1)
        ap = (precision * hits).sum(1) / np.maximum(found, 1)
        return {**{f"recall@{k}": hits[:, :k].any(1).astype(float) for k in ks}, "ap": ap}
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
    ap_over: str = "relevant",
) -> dict[str, float]:
    """Search a gallery index of normalised features -> mean recall@k and mAP (@map_k, or full ranking);
    `ap_over` as in `ranking_metrics`. An id of -1 (an approximate index found fewer than the depth) is
    never relevant."""
    depth = min(max(max(ks), map_k or index.ntotal), index.ntotal)
    relevant_per_label = np.bincount(
        gallery_labels, minlength=int(max(gallery_labels.max(), query_labels.max())) + 1
    )
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(queries), chunk_size):
        labels = query_labels[start : start + chunk_size]
        _, ids = search(index, normalized(queries[start : start + chunk_size]), depth, chunk_size)
        ranked = np.where(ids >= 0, gallery_labels[ids], np.iinfo(np.int64).min)
        scored = ranking_metrics(ranked, labels, relevant_per_label[labels], ks, ap_over)
        for name, values in scored.items():
            parts.setdefault(name, []).append(values)
    metrics = {
        name: float(np.nanmean(np.concatenate(values))) for name, values in parts.items() if name != "ap"
    }
    metrics["map" if map_k is None else f"map@{map_k}"] = float(np.nanmean(np.concatenate(parts["ap"])))
    return metrics


def cmd_holdout(queries: Features, gallery: Features, every: int) -> tuple[Features, Features]:
    """CMD's `split_mode='ratio'`: every `every`-th item of `queries` (0, every, 2 * every, ...) is a query;
    the gallery is `gallery` followed by the remaining items of `queries`."""
    chosen = torch.zeros(len(queries), dtype=torch.bool)
    chosen[::every] = True
    rest = replace(queries, feats=queries.feats[~chosen], labels=queries.labels[~chosen])
    merged = replace(
        gallery, feats=torch.cat([gallery.feats, rest.feats]), labels=torch.cat([gallery.labels, rest.labels])
    )
    return replace(queries, feats=queries.feats[chosen], labels=queries.labels[chosen]), merged


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.retrieve
    queries = store.features(c.query_split, c.pooling)
    details: dict = {"protocol": c.protocol, "queries": len(queries)}
    map_k, ap_over = c.map_k, "relevant"
    if c.protocol == "cmd":
        if c.load_index is not None:
            raise ValueError("retrieve.protocol=cmd builds its gallery from two splits: leave retrieve.load_index unset")
        queries, gallery = cmd_holdout(queries, store.features(c.gallery_split, c.pooling), c.query_every)
        map_k, ap_over = c.map_k or 100, "retrieved"
        details["queries"] = len(queries)
    if c.load_index is not None:
        index = load_index(c.load_index, gpu=False)
        gallery_labels = np.load(f"{c.load_index}.labels.npy")
        if index.d != queries.feats.shape[1]:
            raise ValueError(
                f"retrieve.load_index={c.load_index} holds {index.d}-d vectors, the backbone gives {queries.feats.shape[1]}"
            )
        details["index"] = {"loaded": str(Path(c.load_index).resolve()), **describe(index)}
    else:
        if c.index != "flat" and map_k is None:
            raise ValueError(
                f"retrieve.index={c.index} ranks only the candidates it finds: set retrieve.map_k (e.g. 100)"
            )
        if c.protocol == "splits":
            gallery = store.features(c.gallery_split, c.pooling)
        gallery_labels = gallery.labels.numpy()
        gpu = gpu_available() and (map_k or len(gallery)) <= GPU_MAX_K
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
        index, gallery_labels, queries.feats, queries.labels.numpy(), c.ks, map_k, c.chunk_size, ap_over
    )
    details.update(gallery_size=int(index.ntotal), depth=min(map_k or index.ntotal, index.ntotal), ap_over=ap_over)
    if c.load_index is None and c.index != "flat":  # beside the scores: how exact the neighbours were
        metrics[f"index_recall@{max(c.ks)}"] = details["index"][f"recall@{max(c.ks)}"]
    row = {"gallery": int(index.ntotal), "queries": len(queries), **metrics}
    return Result("retrieve", metrics, [row], details)
