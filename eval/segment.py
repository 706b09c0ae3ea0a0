"""Segmentation transfer: a linear 1x1 head on frozen patch tokens, logits upsampled (bilinear) to the
mask size, trained with cross-entropy; mIoU, pixel accuracy and per-class Dice on the eval split.

The head is BatchNorm + 1x1 convolution (dinov2's linear BNHead), applied per token: linear at inference.
Images only: a video backbone sees each image as a static clip (eval.features.StaticClip).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn import functional as F

from eval.results import Result
from eval.store import FeatureStore
from ssl_distill.runtime import cpu_threads


class SegmentationHead(nn.Module):
    """Per-token BatchNorm + linear classifier (a 1x1 convolution on the patch grid)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """tokens (B, h*w, D) on a (h, w) grid -> logits (B, K, H, W) at `size`."""
        b, length, d = tokens.shape
        logits = self.classifier(self.norm(tokens.float().reshape(b * length, d)))
        logits = logits.reshape(b, *grid, -1).permute(0, 3, 1, 2)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def train_segmentation_head(
    tokens: Tensor,
    masks: Tensor,
    grid: tuple[int, int],
    num_classes: int,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    ignore_index: int = 255,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SegmentationHead:
    """tokens (N, h*w, D), masks (N, H, W) int -> a head trained with AdamW and cosine decay."""
    generator = torch.Generator().manual_seed(seed)
    head = SegmentationHead(tokens.shape[-1], num_classes)
    with torch.no_grad():
        head.classifier.weight.normal_(std=0.01, generator=generator)
        head.classifier.bias.zero_()
    head.to(device).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, epochs * math.ceil(len(tokens) / batch_size)
    )
    size = tuple(masks.shape[-2:])
    for _ in range(epochs):
        order = torch.randperm(len(tokens), generator=generator)
        for start in range(0, len(tokens), batch_size):
            batch = order[start : start + batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            logits = head(tokens[batch].to(device), grid, size)
            loss = F.cross_entropy(logits, masks[batch].to(device), ignore_index=ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def predict_masks(
    head: SegmentationHead,
    tokens: Tensor,
    grid: tuple[int, int],
    size: tuple[int, int],
    batch_size: int = 256,
) -> Tensor:
    """tokens (N, h*w, D) -> predicted class per pixel (N, H, W) int64."""
    device = next(head.parameters()).device
    parts = [
        head(tokens[i : i + batch_size].to(device), grid, size).argmax(1).cpu()
        for i in range(0, len(tokens), batch_size)
    ]
    return torch.cat(parts)


def segmentation_metrics(
    predictions: Tensor, masks: Tensor, num_classes: int, ignore_index: int = 255
) -> dict:
    """Per-class IoU and Dice from the pixel confusion matrix; mIoU and mean Dice over the classes that
    occur (in the masks or the predictions); pixels equal to ignore_index do not count."""
    valid = masks != ignore_index
    pairs = masks[valid].long() * num_classes + predictions[valid].long()
    matrix = torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    tp = matrix.diag()
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    present = (tp + fp + fn) > 0
    iou = torch.where(present, tp / (tp + fp + fn).clamp_min(1), torch.nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.nan)
    return {
        "miou": float(iou[present].mean()),
        "mean_dice": float(dice[present].mean()),
        "pixel_accuracy": float(tp.sum() / matrix.sum().clamp_min(1)),
        "iou": iou.tolist(),
        "dice": dice.tolist(),
    }


def _overlays(
    store: FeatureStore, split: str, predictions: Tensor, masks: Tensor, count: int
) -> dict[str, np.ndarray]:
    """The first `count` eval images (resized and cropped like their masks) with masks and predictions."""
    source = store.source(split)
    count = min(count, len(masks))
    if count == 0 or not hasattr(source[0], "image"):
        return {}
    size = int(masks.shape[-1])
    images = [np.asarray(TF.center_crop(TF.resize(source[i].image, size), size)) for i in range(count)]
    return {
        "images": np.stack(images),
        "masks": masks[:count].numpy(),
        "predictions": predictions[:count].numpy(),
    }


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.segment
    train = store.features(c.train_split, "patch")
    test = store.features(c.eval_split, "patch")
    if train.masks is None or test.masks is None:
        raise ValueError(f"segment: dataset '{cfg.data.name}' has no masks (try --data shapes)")
    if train.masks.dim() != 3 or len(train.grid) != 2:
        raise ValueError(
            f"segment scores one mask per image, and dataset '{cfg.data.name}' gives clips: use frames "
            "(e.g. echo_frames; a video backbone sees each frame as a static clip)"
        )
    num_classes = c.num_classes
    if num_classes is None:
        labelled = torch.cat([train.masks.flatten(), test.masks.flatten()])
        num_classes = int(labelled[labelled != c.ignore_index].max()) + 1
    with cpu_threads(cfg.run.fit_threads):
        head = train_segmentation_head(
            train.feats,
            train.masks,
            train.grid,
            num_classes,
            c.epochs,
            c.lr,
            c.weight_decay,
            c.batch_size,
            c.ignore_index,
            c.seed,
            store.device,
        )
        predictions = predict_masks(head, test.feats, test.grid, tuple(test.masks.shape[-2:]))
    scores = segmentation_metrics(predictions, test.masks, num_classes, c.ignore_index)
    classes = test.classes
    names = (
        ["background", *classes] if num_classes == len(classes) + 1 else [str(i) for i in range(num_classes)]
    )
    metrics = {key: scores[key] for key in ("miou", "mean_dice", "pixel_accuracy")}
    rows = [
        {"class": name, "iou": iou, "dice": dice}
        for name, iou, dice in zip(names, scores["iou"], scores["dice"])
    ]
    sizes = {"train": len(train), "test": len(test)}
    rows.append({"class": "mean", "iou": scores["miou"], "dice": scores["mean_dice"], **sizes})
    details = {"classes": names, "iou": scores["iou"], "dice": scores["dice"], "grid": list(train.grid)}
    overlays = _overlays(store, c.eval_split, predictions, test.masks, c.overlays)
    return Result("segment", metrics, rows, details, {"overlays": overlays} if overlays else {})
