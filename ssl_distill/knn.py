"""Weighted k-nearest-neighbour classification (Wu et al. 2018, as in DINO's `eval_knn.py`): the one
implementation behind the `ssl-eval knn` protocol and the online monitor of training runs.

The vote lives here, in `ssl_distill`, because the layering runs one way: `eval` may import these leaf
modules of `ssl_distill`, while `ssl_distill` never imports `eval`. Both search neighbours with faiss's
exact inner-product index on L2-normalised features, so they break ties between equally similar samples
(duplicate images) the same way and agree on CPU to the last query; `eval/search.py` adds GPU and
approximate indexes for large banks, and `cosine_neighbors` here is the plain exact search the monitor
runs on a few thousand features.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import Tensor


def weighted_vote(
    sims: Tensor, neighbor_labels: Tensor, num_classes: int, temperature: float = 0.07
) -> Tensor:
    """sims (M, k) cosine similarities and neighbor_labels (M, k) -> (M, C) class scores summing to 1.

    The weights exp(sim / T) are scaled per query by exp(-max sim / T), which leaves the vote unchanged
    and keeps small temperatures from overflowing. A neighbour with sim -inf (not found by an approximate
    index) has no weight.
    """
    sims = torch.as_tensor(sims, dtype=torch.float64)
    weights = torch.exp((sims - sims.max(dim=1, keepdim=True).values) / temperature).nan_to_num(0.0)
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64, device=sims.device)
    votes.scatter_add_(1, torch.as_tensor(neighbor_labels, dtype=torch.int64, device=sims.device), weights)
    return votes / votes.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def cosine_neighbors(bank: Tensor, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact top-k by cosine similarity (faiss `IndexFlatIP` on CPU): bank (N, D), queries (M, D) ->
    sims (M, k) float32 and ids (M, k) int64, best first."""
    bank_np, queries_np = (
        np.ascontiguousarray(torch.nn.functional.normalize(x.detach().float().cpu(), dim=1).numpy())
        for x in (bank, queries)
    )
    index = faiss.IndexFlatIP(bank_np.shape[1])
    index.add(bank_np)
    sims, ids = index.search(queries_np, min(k, len(bank_np)))
    return torch.from_numpy(sims), torch.from_numpy(ids)


def knn_predict(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, num_classes: int, temperature: float = 0.07
) -> Tensor:
    """Predicted class (M,) of each query by the weighted vote of its k nearest bank samples."""
    sims, ids = cosine_neighbors(bank, queries, k)
    return weighted_vote(sims, bank_labels.cpu()[ids], num_classes, temperature).argmax(1)
