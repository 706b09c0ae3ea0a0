"""Named representations: features a backbone computes beyond its class and patch tokens, and the items of
multi-view datasets they need.

A backbone with `representations(inputs) -> {name: (B, D)}` (MRDD's `consistent`, `specific`,
`combined`; a two-class-token ViT's `cls2`) is evaluated on them by setting a protocol's `pooling` to the
name. Multi-view items ({'views': [V tensors], 'view_names', 'label'}) go to the backbone as a list of V
batched views; they have only named representations (a multi-view encoder has no single token grid).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from eval.extract import Adapter, Features, Item, _Adapted

REPRESENTATIONS = ("cls2", "consistent", "specific", "combined")


class MultiViewAdapter:
    """A multi-view item -> Item whose input is the list of its V view tensors."""

    key = {"kind": "multiview"}

    def __call__(self, item: dict[str, Any]) -> Item:
        return Item(list(item["views"]), int(item["label"]), math.nan, None)


def multiview_adapter(source: Dataset) -> MultiViewAdapter | None:
    """The adapter for a dataset of aligned views (its items name their views), else None."""
    if isinstance(source, IterableDataset):  # shards hold single images or clips
        return None
    first = source[0]
    return MultiViewAdapter() if isinstance(first, dict) and "view_names" in first else None


def _collate(items: list[Item]) -> tuple[Tensor | list[Tensor], Tensor]:
    first = items[0].input
    inputs = [torch.stack(views) for views in zip(*(i.input for i in items))] if isinstance(first, list) else torch.stack([i.input for i in items])
    return inputs, torch.tensor([item.label for item in items], dtype=torch.int64)


@torch.inference_mode()
def extract_representation(
    backbone: nn.Module,
    dataset: Dataset,
    adapter: Adapter,
    pooling: str,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    classes: tuple[str, ...] = (),
    progress: bool = False,
    desc: str = "features",
) -> Features:
    """The representation named `pooling` of every item (N, D); images or multi-view items."""
    available = getattr(backbone, "representation_names", ())
    if pooling not in available:
        raise ValueError(
            f"pooling '{pooling}': the backbone ({backbone.spec.get('kind', type(backbone).__name__)}) gives "
            f"{list(available) or 'no named representations'}"
        )
    device = torch.device(device)
    backbone = backbone.eval().to(device)
    loader = DataLoader(_Adapted(dataset, adapter), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    feats, labels = [], []
    for inputs, label in tqdm(loader, desc=desc, disable=not progress, leave=False):
        inputs = [v.to(device) for v in inputs] if isinstance(inputs, list) else inputs.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats.append(backbone.representations(inputs)[pooling].float().cpu())
        labels.append(label)
    labels_ = torch.cat(labels)
    return Features(
        feats=torch.cat(feats),
        labels=labels_,
        targets=torch.full((len(labels_),), math.nan),
        masks=None,
        grid=(),
        classes=tuple(classes),
    )
