"""Zero-shot classification with a text tower (CLIP, Radford et al. 2021; TIPS `run_text_encoder_inference`
and its zero-shot notebook): each class is the mean of its L2-normalised prompt embeddings (the class
name in every template), re-normalised; an image goes to the class of highest cosine with its embedding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from eval.metrics import classification_metrics, confusion, rank_classes
from eval.results import Result
from eval.store import FeatureStore
from eval.text import encode_texts, load_text_tower, text_tower_path


def class_embeddings(tower: torch.nn.Module, classes: list[str], templates: list[str]) -> Tensor:
    """(C, D) prompt-ensemble embeddings, one per class, L2-normalised."""
    prompts = [template.format(name) for name in classes for template in templates]
    embedded = encode_texts(tower, prompts).unflatten(0, (len(classes), len(templates)))
    return F.normalize(embedded.mean(1), dim=-1)


def zero_shot_scores(images: Tensor, classes: Tensor) -> Tensor:
    """images (N, D), classes (C, D) -> (N, C) cosine similarities."""
    return F.normalize(images.float(), dim=-1) @ F.normalize(classes.float(), dim=-1).T


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.zeroshot
    features = store.features(c.split, c.pooling)
    names = list(features.classes)
    if not names:
        raise ValueError(f"zeroshot: dataset '{cfg.data.name}' has no class names to prompt with")
    tower = load_text_tower(text_tower_path(store.source_ref, c.text))
    scores = zero_shot_scores(features.feats, class_embeddings(tower, names, list(c.templates))).numpy()
    labels = features.labels.numpy()
    ranked = rank_classes(scores)
    metrics = classification_metrics(labels, ranked)
    per_class = [
        {"class": name, "top1": float((ranked[labels == i, 0] == i).mean()) if (labels == i).any() else float("nan"),
         "n": int((labels == i).sum())}
        for i, name in enumerate(names)
    ]
    rows = [{"split": c.split, "pooling": c.pooling, "templates": len(c.templates), "n": len(labels), **metrics}]
    details = {"classes": names, "per_class": per_class, "confusion": confusion(labels, ranked[:, 0], len(names)),
               "chance": float(np.bincount(labels).max() / len(labels))}
    return Result("zeroshot", metrics, rows, details)
