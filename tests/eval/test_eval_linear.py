import numpy as np

from eval.linear import logistic_probe, regression_metrics, ridge_probe, torch_probe


def _separable(n: int, classes: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, dim)) * 3
    return (centers[labels] + rng.normal(scale=0.3, size=(n, dim))).astype(np.float32), labels


def test_logistic_probe_separable_and_random_labels():
    x, y = _separable(600, 4, 16, seed=0)
    proba, info = logistic_probe(x[:400], y[:400], x[400:], 4, Cs=[0.01, 1.0], holdout=0.25)
    assert (proba.argmax(1) == y[400:]).mean() >= 0.99
    assert info["C"] in (0.01, 1.0) and len(info["sweep"]) == 2
    rng = np.random.default_rng(1)
    noise, labels = rng.normal(size=(800, 16)).astype(np.float32), rng.integers(0, 4, 800)
    proba, _ = logistic_probe(noise[:400], labels[:400], noise[400:], 4, Cs=[0.01, 1.0])
    assert abs((proba.argmax(1) == labels[400:]).mean() - 0.25) < 0.1


def test_torch_probe_separable_and_random_labels():
    x, y = _separable(600, 4, 16, seed=2)
    proba, info = torch_probe(x[:400], y[:400], x[400:], 4, lrs=[1e-2, 1e-3], epochs=10, batch_size=100)
    assert (proba.argmax(1) == y[400:]).mean() >= 0.99
    assert info["lr"] in (1e-2, 1e-3)
    rng = np.random.default_rng(3)
    noise, labels = rng.normal(size=(800, 16)).astype(np.float32), rng.integers(0, 4, 800)
    proba, _ = torch_probe(noise[:400], labels[:400], noise[400:], 4, lrs=[1e-2], epochs=5, batch_size=100)
    assert abs((proba.argmax(1) == labels[400:]).mean() - 0.25) < 0.1


def test_ridge_probe_recovers_a_linear_target():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 12))
    target = x @ rng.normal(size=12) * 10 + 55 + rng.normal(scale=0.5, size=500)  # like ejection fraction
    predictions, info = ridge_probe(x[:400], target[:400], x[400:])
    scores = regression_metrics(target[400:], predictions)
    assert scores["r2"] > 0.95 and scores["mae"] < 1.5 and "alpha" in info
    predictions, _ = ridge_probe(x[:400], rng.normal(size=400), x[400:])
    assert regression_metrics(rng.normal(size=100), predictions)["r2"] < 0.1
