"""Weighted k-nearest-neighbour classification (Wu et al. 2018, as in DINO's `eval_knn.py`): the one
implementation behind the `ssl-eval knn` protocol and the online monitor of training runs.

The vote lives here, in `ssl_distill`, because the layering runs one way: `eval` may import these leaf
modules of `ssl_distill`, while `ssl_distill` never imports `eval`. Only the neighbour search differs by
caller: `eval/knn.py` searches a faiss index (exact, GPU or approximate for large banks),
`cosine_neighbors` here is the exact search the monitor runs on a few thousand features on the
training device. Both hand (similarities, neighbour labels) to `weighted_vote`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weighted_vote(sims: Tensor, neighbor_labels: Tensor, num_classes: int, temperature: float = 0.07) -> Tensor:
    """sims (M, k) cosine similarities and neighbor_labels (M, k) -> (M, C) class scores summing to 1.

    The weights exp(sim / T) are scaled per query by exp(-max sim / T), which leaves the vote unchanged
    and keeps small temperatures from overflowing.
    """
    sims = torch.as_tensor(sims, dtype=torch.float64)
    weights = torch.exp((sims - sims.max(dim=1, keepdim=True).values) / temperature)
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64, device=sims.device)
    votes.scatter_add_(1, torch.as_tensor(neighbor_labels, dtype=torch.int64, device=sims.device), weights)
    return votes / votes.sum(dim=1, keepdim=True)


def cosine_neighbors(bank: Tensor, queries: Tensor, k: int, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Exact top-k by cosine similarity: bank (N, D), queries (M, D) -> sims (M, k), ids (M, k), best first."""
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    queries = torch.nn.functional.normalize(queries.float(), dim=1)
    k = min(k, len(bank))
    parts = [torch.topk(chunk @ bank.T, k, dim=1) for chunk in queries.split(chunk_size)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def knn_predict(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, num_classes: int, temperature: float = 0.07
) -> Tensor:
    """Predicted class (M,) of each query by the weighted vote of its k nearest bank samples."""
    sims, ids = cosine_neighbors(bank, queries, k)
    return weighted_vote(sims, bank_labels.to(ids.device)[ids], num_classes, temperature).argmax(1)
