"""Clustering: k-means with k = the number of classes on frozen features of one split, scored against the
labels by accuracy under the best one-to-one matching of clusters to classes (Hungarian), NMI and ARI
(MRDD's protocol, official `src/utils/metrics.py`; on the held-out split, not the train split the release
scores). k-means runs `runs` times with seeds seed .. seed + runs - 1; the table gives mean and std.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from eval.knn import num_classes_of
from eval.results import Result
from eval.store import FeatureStore
from ssl_distill.runtime import cpu_threads


def clustering_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """The fraction of samples whose cluster maps to their label under the best one-to-one matching."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    size = int(max(labels.max(), clusters.max())) + 1
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """acc (Hungarian), nmi (arithmetic normalisation, as the official code), ari."""
    return {
        "acc": clustering_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


def kmeans_scores(feats: np.ndarray, labels: np.ndarray, k: int, runs: int = 10, n_init: int = 10, seed: int = 0) -> dict[str, list[float]]:
    """{metric: one value per k-means run}."""
    scores: dict[str, list[float]] = {"acc": [], "nmi": [], "ari": []}
    for run in range(runs):
        clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed + run).fit_predict(feats)
        for name, value in clustering_scores(labels, clusters).items():
            scores[name].append(value)
    return scores


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.cluster
    features = store.features(c.split, c.pooling)
    feats = features.feats.float().numpy()
    if c.normalize:
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    labels = features.labels.numpy()
    k = num_classes_of(features, features)
    with cpu_threads(cfg.run.fit_threads):
        scores = kmeans_scores(feats, labels, k, c.runs, c.n_init, c.seed)
    metrics = {name: float(np.mean(values)) for name, values in scores.items()}
    metrics.update({f"{name}_std": float(np.std(values)) for name, values in scores.items()})
    rows = [
        {"metric": name, "mean": float(np.mean(values)), "std": float(np.std(values)), "runs": c.runs, "n": len(labels)}
        for name, values in scores.items()
    ]
    details = {"split": c.split, "pooling": c.pooling, "k": k, "runs": scores}  # n per split: added by run_protocol
    return Result("cluster", metrics, rows, details)
