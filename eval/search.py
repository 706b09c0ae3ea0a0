"""Exact nearest-neighbour search with faiss (on a GPU when faiss has one), queried in chunks."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import Tensor

GPU_MAX_K = 2048  # faiss GPU flat search returns at most this many neighbours


def normalized(x: Tensor | np.ndarray) -> np.ndarray:
    """(N, D) -> float32 C-contiguous rows of unit L2 norm (inner product = cosine)."""
    x = torch.as_tensor(x).float()
    return np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy())


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@lru_cache(maxsize=1)
def _gpu_resources() -> faiss.StandardGpuResources:
    return faiss.StandardGpuResources()


def build_index(vectors: np.ndarray, metric: str = "ip", gpu: bool | None = None) -> faiss.Index:
    """Flat (exact) index over (N, D) float32 vectors; metric 'ip' (inner product) or 'l2' (squared L2)."""
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got '{metric}'")
    index = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    if gpu_available() if gpu is None else gpu:
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, chunk_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of (M, D) queries, `chunk_size` at a time: scores (M, k) float32 and ids (M, k) int64,
    best first (largest inner product, or smallest squared L2)."""
    k = min(k, index.ntotal)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores, ids = [], []
    for start in range(0, len(queries), chunk_size):
        chunk_scores, chunk_ids = index.search(queries[start : start + chunk_size], k)
        scores.append(chunk_scores)
        ids.append(chunk_ids)
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(ids)


def save_index(index: faiss.Index, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu_index = faiss.index_gpu_to_cpu(index) if not isinstance(index, faiss.IndexFlat) else index
    faiss.write_index(cpu_index, str(path))
    return path


def load_index(path: str | Path, gpu: bool | None = None) -> faiss.Index:
    index = faiss.read_index(str(path))
    if gpu_available() if gpu is None else gpu:
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    return index
