"""Thread limits for the small fits on cached features (probes, segmentation heads, t-SNE).

On a few shared cores, BLAS/OpenMP thread teams spend most of their time waiting on each other: a
logistic regression on 4,000 x 64 features took 59 s with two threads next to other jobs and 0.7 s with one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Cap BLAS/OpenMP (threadpoolctl) and torch intra-op threads inside the block; None changes nothing."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(previous)
