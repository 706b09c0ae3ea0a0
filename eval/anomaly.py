"""Anomaly detection from frozen features.

`distance`: the bank holds the normal training samples; a query's score is its mean distance (L2 between
normalised features) to its k nearest bank samples; AUROC and average precision against the
normal/abnormal labels. `zero_shot` (DISCOVR): weighted kNN (k=10, T=0.07) with the validation split as
memory bank and the test split as queries; accuracy, balanced accuracy, macro F1/precision/recall.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from eval.knn import knn_rank, num_classes_of
from eval.metrics import classification_metrics, confusion
from eval.results import Result
from eval.search import build_index, normalized, search
from eval.store import FeatureStore

DEFAULT_SPLITS = {"distance": ("train", "val"), "zero_shot": ("val", "test")}


def knn_distance_scores(bank: Tensor, queries: Tensor, k: int = 10, chunk_size: int = 4096) -> np.ndarray:
    """bank (N, D), queries (M, D) -> (M,) mean L2 distance of each normalised query to its k nearest."""
    squared, _ = search(build_index(bank, "l2", normalize=True), normalized(queries), k, chunk_size)
    return np.sqrt(np.clip(squared, 0, None)).mean(1)


def detection_metrics(abnormal: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """abnormal (M,) bool, scores (M,) higher = more anomalous -> AUROC and average precision."""
    if abnormal.all() or not abnormal.any():
        raise ValueError("anomaly: the queries need both normal and abnormal samples")
    return {
        "auroc": float(roc_auc_score(abnormal, scores)),
        "average_precision": float(average_precision_score(abnormal, scores)),
    }


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.anomaly
    if c.method not in DEFAULT_SPLITS:
        raise ValueError(f"anomaly.method must be one of {sorted(DEFAULT_SPLITS)}, got '{c.method}'")
    bank_split = c.bank_split or DEFAULT_SPLITS[c.method][0]
    query_split = c.query_split or DEFAULT_SPLITS[c.method][1]
    bank = store.features(bank_split, c.pooling)
    queries = store.features(query_split, c.pooling)
    normal = torch.as_tensor(list(c.normal), dtype=torch.int64)
    details = {
        "method": c.method,
        "bank_split": bank_split,
        "query_split": query_split,
        "normal": list(c.normal),
        "k": c.k,
    }
    if c.method == "distance":
        keep = torch.isin(bank.labels, normal)
        if not keep.any():
            raise ValueError(
                f"anomaly: no bank samples with a normal label {list(c.normal)} in split '{bank_split}'"
            )
        scores = knn_distance_scores(bank.feats[keep], queries.feats, c.k, c.chunk_size)
        metrics = detection_metrics(~torch.isin(queries.labels, normal).numpy(), scores)
        details["bank_size"] = int(keep.sum())
        row = {"method": "distance", "k": c.k, "bank": int(keep.sum()), "queries": len(queries), **metrics}
        return Result("anomaly", metrics, [row], details)
    bank_labels, query_labels = bank.labels, queries.labels
    num_classes = num_classes_of(bank, queries)
    if c.binarize:
        bank_labels, query_labels = (
            (~torch.isin(labels, normal)).long() for labels in (bank_labels, query_labels)
        )
        num_classes = 2
    if c.k > len(bank):
        store.warn(f"anomaly: k={c.k} exceeds the bank of {len(bank)} samples and was clipped to {len(bank)}")
    ranked = knn_rank(bank.feats, bank_labels, queries.feats, [c.k], num_classes, c.temperature, c.chunk_size)
    ((k, ranks),) = ranked.items()
    metrics = classification_metrics(query_labels.numpy(), ranks)
    metrics["accuracy"] = metrics.pop("top1")
    details.update(k=k, temperature=c.temperature, bank_size=len(bank))
    details["confusion"] = confusion(query_labels.numpy(), ranks[:, 0], num_classes)
    row = {"method": "zero_shot", "k": k, "bank": len(bank), "queries": len(queries), **metrics}
    return Result("anomaly", metrics, [row], details)
