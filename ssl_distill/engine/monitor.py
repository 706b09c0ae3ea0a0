"""Online monitoring: every `monitor.every` steps, the weighted kNN top-1 (and optionally a linear probe) of
the backbone that will be exported, on held-out data, logged as `monitor/knn_top1` (`monitor/linear_top1`)
next to the losses in metrics.csv and TensorBoard. It is measured once before the first step too, so the
random-init value sits in the same log: a collapsing run (DINO's loss stuck at ln(output_dim)) shows as a
kNN that falls to or below it while the run trains.

Bank = `monitor.bank_split` (default the training split, `bank_limit` samples), queries = `monitor.split`
(default `val`, `limit` samples), both through the deterministic eval transform (resize + centre crop at
the model's input size, the training normalisation); video clips are read with uniform clip sampling and no
crop or flip. The vote is `ssl_distill.knn`, the implementation `ssl-eval knn` uses. Runs on the main
rank only, without touching the RNG streams the training reads (no DataLoader, no random transform).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ssl_distill.backbones.export import preprocess_of
from ssl_distill.data import build_source, eval_transform
from ssl_distill.errors import ConfigError
from ssl_distill.knn import knn_predict
from ssl_distill.registry import DATASETS

DETERMINISTIC_CLIPS = {"clip_sampling": "uniform", "crop_scale": None, "hflip": 0.0}


class Monitor:
    """`monitor(backbone)` -> {'monitor/knn_top1': ..., ['monitor/linear_top1': ...]} on fixed held-out data."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        m = cfg.monitor
        if m.every % cfg.train.log_every:
            raise ConfigError(
                f"monitor.every={m.every} must be a multiple of train.log_every={cfg.train.log_every}"
            )
        self.cfg, self.device, self.every = m, device, m.every
        options = OmegaConf.to_container(cfg.data.options, resolve=True)
        fields = set(DATASETS.get(cfg.data.name).Config.__dataclass_fields__)
        options.update({k: v for k, v in DETERMINISTIC_CLIPS.items() if k in fields})
        self.bank = build_source(cfg.data.name, cfg.data.root, m.bank_split, m.bank_limit, **options)
        self.queries = build_source(cfg.data.name, cfg.data.root, m.split, m.limit, **options)
        preprocess = preprocess_of(cfg)
        self.transform = eval_transform(int(cfg.model.img_size), preprocess["mean"], preprocess["std"])
        self.bank_labels, self.query_labels = self._labels(self.bank), self._labels(self.queries)
        self.num_classes = int(max(self.bank_labels.max(), self.query_labels.max())) + 1
        if len(torch.unique(self.bank_labels)) < 2:
            raise ConfigError(
                f"monitor: split '{m.bank_split}' of dataset '{cfg.data.name}' has fewer than two labels; "
                "the kNN monitor needs labelled data (set monitor.every=0 to turn it off)"
            )

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def describe(self, step: int, results: dict[str, float]) -> str:
        scores = ", ".join(
            f"{k.removeprefix('monitor/')} {v:.4f}" for k, v in results.items() if k.endswith("top1")
        )
        return f"monitor at step {step}: {scores} (bank {len(self.bank)}, queries {len(self.queries)}, k={self.cfg.k})"

    def _item(self, source: Any, index: int) -> tuple[Tensor, int]:
        item = source[index]
        if isinstance(item, dict):  # a clip dataset
            return torch.as_tensor(item["video"], dtype=torch.float32), int(item["label"])
        return self.transform(item.image), int(item.label)

    def _labels(self, source: Any) -> Tensor:
        if hasattr(source, "provides"):  # a clip dataset: labels from its file list, without decoding clips
            labels = [entry.label for entry in source.entries]
        elif getattr(source, "labels", None) is not None and len(source.labels) == len(source):
            labels = list(source.labels)
        else:
            labels = [source[i].label for i in range(len(source))]
        return torch.as_tensor(np.asarray(labels, dtype=np.int64))

    @torch.no_grad()
    def _features(self, backbone: nn.Module, source: Any) -> Tensor:
        feats = []
        for start in range(0, len(source), self.cfg.batch_size):
            batch = [
                self._item(source, i)[0] for i in range(start, min(start + self.cfg.batch_size, len(source)))
            ]
            inputs = torch.stack(batch).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                feats.append(backbone(inputs).float())
        return torch.cat(feats)

    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        tic = time.perf_counter()
        training = backbone.training
        backbone.eval()
        try:
            bank, queries = self._features(backbone, self.bank), self._features(backbone, self.queries)
        finally:
            backbone.train(training)
        predicted = knn_predict(
            bank, self.bank_labels, queries, self.cfg.k, self.num_classes, self.cfg.temperature
        )
        results = {"monitor/knn_top1": float((predicted == self.query_labels).float().mean())}
        if self.cfg.linear:
            results["monitor/linear_top1"] = linear_top1(
                bank.cpu(), self.bank_labels, queries.cpu(), self.query_labels
            )
        results["monitor/seconds"] = time.perf_counter() - tic
        return results


def linear_top1(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor) -> float:
    """Top-1 of a standardised logistic regression (C=1) fitted on `train`: a quick probe, not the protocol."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(train.numpy(), train_labels.numpy())
    return float((model.predict(test.numpy()) == test_labels.numpy()).mean())
