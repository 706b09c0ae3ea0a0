"""Classification metrics shared by the protocols (scikit-learn underneath, imported on first use so
that importing a protocol stays fast)."""

from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, ranked: np.ndarray) -> dict[str, float]:
    """labels (N,) and predicted classes ranked best first (N, r) -> top1, top5 (when r >= 5),
    balanced accuracy, macro F1, macro precision and macro recall."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        precision_score,
        recall_score,
    )

    labels = np.asarray(labels)
    ranked = np.asarray(ranked).reshape(len(labels), -1)
    predictions = ranked[:, 0]
    metrics = {
        "top1": float(accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "macro_precision": float(precision_score(labels, predictions, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(labels, predictions, average="macro", zero_division=0)),
    }
    if ranked.shape[1] >= 5:
        metrics["top5"] = float((ranked[:, :5] == labels[:, None]).any(1).mean())
    return metrics


def ranks_kept(num_classes: int) -> int:
    """How many ranked classes to keep: 5 for top-5 when there are more than 5 classes, else 1."""
    return 5 if num_classes > 5 else 1


def rank_classes(scores: np.ndarray) -> np.ndarray:
    """(N, C) scores -> (N, r) class indices best first, r from `ranks_kept`."""
    scores = np.asarray(scores)
    return np.argsort(-scores, axis=1, kind="stable")[:, : ranks_kept(scores.shape[1])]


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[list[int]]:
    """(C, C) counts, rows = true class, columns = predicted class."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predictions, labels=np.arange(num_classes)).tolist()
