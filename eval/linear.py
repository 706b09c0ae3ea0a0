"""Linear probes on cached features: logistic regression (scikit-learn) with a C sweep, torch linear
heads for large sets (one pass trains a head per learning rate), ridge regression for continuous targets.

The sweep picks its value on a held-out part of the train features, then refits on all of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from eval.extract import Features
from eval.knn import num_classes_of
from eval.metrics import classification_metrics, confusion, rank_classes
from eval.results import Result
from eval.store import FeatureStore
from ssl_distill.runtime import cpu_threads


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out); stratified when every class has at least two samples."""
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    return train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=stratify)


def _logistic(x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> Any:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def _proba(model: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    proba = np.zeros((len(x), num_classes))
    proba[:, model.classes_] = model.predict_proba(x)
    return proba


def logistic_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    num_classes: int,
    Cs: Sequence[float] = (1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4),
    holdout: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Standardised features -> logistic regression; returns test class probabilities (M, C) and the sweep."""
    fit, held = holdout_split(train_y, holdout, seed)
    sweep = []
    for C in Cs:
        model = _logistic(train_x[fit], train_y[fit], C, max_iter)
        sweep.append(
            {"C": float(C), "holdout_top1": float((model.predict(train_x[held]) == train_y[held]).mean())}
        )
    best = max(sweep, key=lambda row: row["holdout_top1"])["C"]
    model = _logistic(train_x, train_y, best, max_iter)
    return _proba(model, test_x, num_classes), {"C": best, "sweep": sweep}


def _train_heads(
    x: Tensor, y: Tensor, num_classes: int, lrs: Sequence[float], epochs: int, batch_size: int, seed: int
) -> nn.ModuleList:
    """One linear head per learning rate, trained together (AdamW, cosine decay) on the same batches."""
    generator = torch.Generator().manual_seed(seed)
    heads = nn.ModuleList(nn.Linear(x.shape[1], num_classes) for _ in lrs).to(x.device)
    for head in heads:
        nn.init.normal_(head.weight, std=0.01, generator=generator)
        nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(
        [{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, lrs)], weight_decay=1e-4
    )
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            loss = sum(nn.functional.cross_entropy(head(x[batch]), y[batch]) for head in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return heads


def torch_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    num_classes: int,
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2),
    epochs: int = 30,
    batch_size: int = 256,
    holdout: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Standardised features -> linear heads (lr sweep); returns test probabilities (M, C) and the sweep."""
    x = torch.as_tensor(train_x, dtype=torch.float32, device=device)
    y = torch.as_tensor(train_y, dtype=torch.int64, device=device)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    test = (torch.as_tensor(test_x, dtype=torch.float32, device=device) - mean) / std
    fit, held = (torch.as_tensor(i, device=device) for i in holdout_split(train_y, holdout, seed))
    heads = _train_heads(x[fit], y[fit], num_classes, lrs, epochs, batch_size, seed)
    with torch.no_grad():
        accuracy = [float((head(x[held]).argmax(1) == y[held]).float().mean()) for head in heads]
    sweep = [{"lr": float(lr), "holdout_top1": acc} for lr, acc in zip(lrs, accuracy)]
    best = float(lrs[int(np.argmax(accuracy))])
    (head,) = _train_heads(x, y, num_classes, [best], epochs, batch_size, seed)
    with torch.no_grad():
        proba = head(test).softmax(1).cpu().numpy()
    return proba, {"lr": best, "sweep": sweep}


def ridge_probe(
    train_x: np.ndarray,
    train_t: np.ndarray,
    test_x: np.ndarray,
    alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
) -> tuple[np.ndarray, dict[str, Any]]:
    """Standardised features -> ridge regression (alpha by leave-one-out); returns test predictions."""
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas))).fit(train_x, train_t)
    return model.predict(test_x), {"alpha": float(model[-1].alpha_)}


def edge_of_grid(sweep: Sequence[dict[str, float]], name: str, score: str = "holdout_top1") -> str | None:
    """'smallest' / 'largest' when the best value of a sweep is at an end of its grid and strictly better
    than its neighbour (the optimum may lie beyond the grid), else None."""
    if len(sweep) < 2:
        return None
    ordered = sorted(sweep, key=lambda row: row[name])
    scores = [row[score] for row in ordered]
    if scores[0] > max(scores[1:]):
        return "smallest"
    if scores[-1] > max(scores[:-1]):
        return "largest"
    return None


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    return {
        "r2": float(r2_score(targets, predictions)),
        "mae": float(mean_absolute_error(targets, predictions)),
        "rmse": float(math.sqrt(mean_squared_error(targets, predictions))),
    }


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.linear
    train = store.features(c.train_split, c.pooling)
    test = store.features(c.eval_split, c.pooling)
    with cpu_threads(cfg.run.fit_threads):
        return _fit(train, test, store, cfg)


def _fit(train: Features, test: Features, store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.linear
    train_x, test_x = train.feats.float().numpy(), test.feats.float().numpy()
    if c.target == "regression":
        if train.targets.isnan().any() or test.targets.isnan().any():
            raise ValueError(f"linear.target=regression: dataset '{cfg.data.name}' has no continuous target")
        predictions, info = ridge_probe(train_x, train.targets.numpy(), test_x, c.alphas)
        metrics = regression_metrics(test.targets.numpy(), predictions)
        if info["alpha"] in (min(c.alphas), max(c.alphas)):
            store.warn(
                f"linear: ridge alpha={info['alpha']:g} is at an end of linear.alphas={list(c.alphas)}: widen it"
            )
        sizes = {"train": len(train), "test": len(test)}
        return Result("linear", metrics, [{"head": "ridge", **info, **sizes, **metrics}], info)
    if c.target != "label":
        raise ValueError(f"linear.target must be 'label' or 'regression', got '{c.target}'")
    num_classes = num_classes_of(train, test)
    train_y, test_y = train.labels.numpy(), test.labels.numpy()
    if len(np.unique(train_y)) < 2:
        raise ValueError(f"linear: split '{c.train_split}' holds a single class (is data.limit too small?)")
    if c.head == "sklearn":
        proba, info = logistic_probe(
            train_x, train_y, test_x, num_classes, c.Cs, c.holdout, c.max_iter, c.seed
        )
    elif c.head == "torch":
        proba, info = torch_probe(
            train_x,
            train_y,
            test_x,
            num_classes,
            c.lrs,
            c.epochs,
            c.batch_size,
            c.holdout,
            c.seed,
            store.device,
        )
    else:
        raise ValueError(f"linear.head must be 'sklearn' or 'torch', got '{c.head}'")
    ranked = rank_classes(proba)
    metrics = classification_metrics(test_y, ranked)
    chosen = {key: value for key, value in info.items() if key != "sweep"}
    name = "C" if c.head == "sklearn" else "lr"
    if (edge := edge_of_grid(info["sweep"], name)) is not None:
        grid = [row[name] for row in info["sweep"]]
        store.warn(
            f"linear: the best {name}={info[name]:g} is the {edge} of linear.{name}s={grid}; the optimum may lie "
            "beyond it: widen the grid"
        )
    details = {
        **info,
        "classes": list(test.classes),
        "confusion": confusion(test_y, ranked[:, 0], num_classes),
    }
    sizes = {"train": len(train), "test": len(test)}
    return Result("linear", metrics, [{"head": c.head, **chosen, **sizes, **metrics}], details)
