"""Nearest-neighbour pairs for training (`ssl-eval knn-pairs`): for every image of a split, its `top`
most similar images of the same split by cosine of L2-normalised, average-pooled backbone features,
written in the NNS layout that STEGO's `src/precompute_knns.py` and CoTAP's `data/nns/*.npz` use
(ssl_distill/data/neighbors.py: one int64 array `nns` (N, top), column 0 = the image itself).

It lives in the evaluation package because it is feature extraction plus exact search, which this
package owns (extraction with its cache, faiss on a GPU when there is one); training only reads the file
(`data.name: neighbors`). The result reports how often a neighbour shares the image's label (n beside it),
a check that the pairs are semantic.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from eval.results import Result
from eval.search import build_index, normalized, search
from eval.store import FeatureStore
from ssl_distill.data.neighbors import write_neighbors


def nearest_neighbors(feats: np.ndarray, top: int, chunk_size: int = 4096) -> np.ndarray:
    """(N, D) features -> (N, top) int64 indices by cosine, most similar first, column 0 = the row itself
    (placed there even when a duplicate image ties with it)."""
    if not 2 <= top <= len(feats):
        raise ValueError(f"knn_pairs.top must lie in [2, {len(feats)}] (images in the split), got {top}")
    vectors = normalized(feats)
    _, ids = search(build_index(vectors, "ip"), vectors, top + 1, chunk_size)
    rows = np.arange(len(vectors))
    others = ids != rows[:, None]
    ranked = np.stack([row[keep][: top - 1] for row, keep in zip(ids, others)])
    return np.concatenate([rows[:, None], ranked], axis=1).astype(np.int64)


def label_agreement(nns: np.ndarray, labels: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Fraction of neighbours 1..k that share the image's label, for each k."""
    same = labels[nns[:, 1:]] == labels[:, None]
    return {k: float(same[:, :k].mean()) for k in ks if k < nns.shape[1]}


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.knn_pairs
    features = store.features(c.split, c.pooling)
    nns = nearest_neighbors(features.feats.float().numpy(), c.top, c.chunk_size)
    labels = features.labels.numpy()
    agreement = label_agreement(nns, labels, sorted(set(c.report_ks)))
    rows = [{"neighbours": k, "label_agreement": value, "images": len(nns)} for k, value in agreement.items()]
    metrics = {f"label_agreement@{k}": value for k, value in agreement.items()}
    details = {"split": c.split, "images": len(nns), "top": c.top, "pooling": c.pooling}
    if c.file is not None:
        details["file"] = str(write_neighbors(c.file, nns).resolve())
    return Result("knn-pairs", metrics, rows, details, {"nns": {"nns": nns}})
