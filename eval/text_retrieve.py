"""Image <-> text retrieval with a text tower: recall@k in both directions over the captions of one split.

Images (pooled features) and captions (text-tower embeddings) are L2-normalised and ranked by cosine. A
caption is relevant to an image when it is one of that image's captions of the chosen stream; identical
caption strings are one gallery entry (noisy alt-text repeats: "a photo of a disk"), so image -> text
hits any of them and text -> image hits any image carrying that text. The table gives n queries per
direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from eval.results import Result
from eval.store import FeatureStore
from eval.text import encode_texts, load_text_tower, text_tower_path


def recall_at_k(similarity: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[str, float]:
    """similarity (Q, G), relevant (Q, G) bool -> {'R@k': fraction of queries with a relevant item in their top k}."""
    order = similarity.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    return {f"R@{k}": float(hits[:, :k].any(1).float().mean()) for k in ks}


def run(store: FeatureStore, cfg: DictConfig) -> Result:
    c = cfg.text_retrieve
    source = store.source(c.split)
    if not hasattr(source, "captions"):
        raise ValueError(f"text_retrieve: dataset '{cfg.data.name}' has no captions (an image-text dataset is needed)")
    stream = c.caption or source.streams[0]
    per_item = [source.captions(i).get(stream) for i in range(len(source))]
    if any(texts is None for texts in per_item):
        raise ValueError(f"text_retrieve.caption='{stream}' is not a caption stream of '{cfg.data.name}' ({sorted(source.captions(0))})")
    gallery = sorted({text for texts in per_item for text in texts})
    index = {text: i for i, text in enumerate(gallery)}
    relevant = torch.zeros(len(per_item), len(gallery), dtype=torch.bool)
    for item, texts in enumerate(per_item):
        relevant[item, [index[t] for t in texts]] = True
    images = F.normalize(store.features(c.split, c.pooling).feats.float(), dim=-1)
    texts = encode_texts(load_text_tower(text_tower_path(store.source_ref, c.text)), gallery)
    similarity = images @ texts.T
    image_to_text = recall_at_k(similarity, relevant, c.ks)
    text_to_image = recall_at_k(similarity.T, relevant.T, c.ks)
    metrics = {**{f"i2t_{k}": v for k, v in image_to_text.items()}, **{f"t2i_{k}": v for k, v in text_to_image.items()}}
    rows = [
        {"direction": "image->text", "caption": stream, "n": len(per_item), **image_to_text},
        {"direction": "text->image", "caption": stream, "n": len(gallery), **text_to_image},
    ]
    details = {"caption": stream, "pooling": c.pooling, "images": len(per_item), "unique_captions": len(gallery),
               "split": c.split, "mean_relevant_images_per_caption": float(relevant.sum(0).float().mean()),
               "ks": list(np.asarray(c.ks).tolist())}
    return Result("text_retrieve", metrics, rows, details)
