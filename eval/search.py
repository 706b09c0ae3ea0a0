"""Nearest-neighbour search with faiss (on a GPU when faiss has one): exact (`flat`) or approximate
(`ivf`, `ivfpq`, `hnsw`) indexes, built and queried in chunks so that memory holds the bank and one
index, plus the recall of an approximate index against exact search on a sample of queries.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor

GPU_MAX_K = 2048  # faiss GPU search returns at most this many neighbours
INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
CHUNK = 65536  # bank rows normalised and added (or scanned) at a time


def normalized(x: Tensor | np.ndarray) -> np.ndarray:
    """(N, D) -> float32 C-contiguous rows of unit L2 norm (inner product = cosine)."""
    x = torch.from_numpy(np.array(x, dtype=np.float32)) if isinstance(x, np.ndarray) else torch.as_tensor(x).float()
    return np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy())


def _rows(x: Tensor | np.ndarray, normalize: bool) -> np.ndarray:
    """(n, D) rows (a tensor, array or memmap slice) as float32 C-contiguous, unit-normalised if asked."""
    if normalize:
        return normalized(x)
    return np.ascontiguousarray(x.float().numpy() if isinstance(x, Tensor) else x, dtype=np.float32)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _on_gpu(index: faiss.Index) -> bool:
    return type(index).__name__.startswith("Gpu")


@lru_cache(maxsize=1)
def _gpu_resources() -> faiss.StandardGpuResources:
    return faiss.StandardGpuResources()


@dataclass(frozen=True)
class IndexSpec:
    """A faiss index kind and its parameters (the `index`, `nlist`, ... settings of knn and retrieve).

    flat: exact. ivf / ivfpq: `nlist` k-means cells (None: 4 sqrt(N), at most N / 39 so that each cell
    has the 39 training points faiss asks for) trained on
    `train_size` sampled rows (None: min(N, 64 nlist), and 64 * 2^nbits for PQ), `nprobe` cells visited per
    query; ivfpq stores `m` codes of `nbits` bits per vector (`m` divides the dim). hnsw: a graph with `m`
    neighbours per node, `ef_construction` and `ef_search` candidate lists; no training.
    """

    index: str = "flat"
    nlist: int | None = None
    nprobe: int = 32
    m: int = 32
    nbits: int = 8
    ef_search: int = 128
    ef_construction: int = 40
    train_size: int | None = None
    seed: int = 0

    @classmethod
    def from_config(cls, section: Any) -> IndexSpec:
        """The spec from a config section holding these keys (eval/config.py `IndexSettings`)."""
        return cls(**{f.name: section[f.name] for f in fields(cls) if f.name in section})

    def nlist_for(self, n: int) -> int:
        if self.nlist is None:
            return max(1, min(round(4 * math.sqrt(n)), n // 39))
        if not 1 <= self.nlist <= n:
            raise ValueError(f"index={self.index}: nlist={self.nlist} must be between 1 and the bank size {n}")
        return self.nlist

    def train_size_for(self, n: int) -> int:
        if self.train_size is not None:
            return min(n, self.train_size)
        floor = 64 * 2**self.nbits if self.index == "ivfpq" else 0
        return min(n, max(64 * self.nlist_for(n), floor))


def _empty_index(spec: IndexSpec, dim: int, n: int, metric: str) -> faiss.Index:
    if spec.index not in INDEX_KINDS:
        raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}, got '{spec.index}'")
    if metric not in METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2', got '{metric}'")
    if spec.index == "flat":
        return faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    if spec.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.m, METRICS[metric])
        index.hnsw.efConstruction, index.hnsw.efSearch = spec.ef_construction, spec.ef_search
        return index
    quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    nlist = spec.nlist_for(n)
    if spec.index == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, METRICS[metric])
    else:
        if dim % spec.m:
            raise ValueError(f"index=ivfpq: m={spec.m} must divide the feature dim {dim}")
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, spec.m, spec.nbits, METRICS[metric])
    index.nprobe = min(spec.nprobe, nlist)
    index.cp.seed = spec.seed
    return index


def build_index(
    vectors: Tensor | np.ndarray,
    metric: str = "ip",
    gpu: bool | None = None,
    spec: IndexSpec = IndexSpec(),
    normalize: bool = False,
    chunk_size: int = CHUNK,
) -> faiss.Index:
    """An index over (N, D) vectors (a tensor, array or memmap), `chunk_size` rows at a time, unit-normalised
    first with `normalize`; metric 'ip' (inner product) or 'l2' (squared L2). Approximate kinds train on a
    seeded sample of rows. Peak memory: the vectors, the index and one chunk. hnsw stays on the CPU."""
    n, dim = vectors.shape
    index = _empty_index(spec, dim, n, metric)
    if (gpu_available() if gpu is None else gpu) and spec.index != "hnsw":
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(spec.seed).choice(n, spec.train_size_for(n), replace=False))
        index.train(_rows(vectors[rows], normalize))
    if isinstance(index, faiss.IndexFlatCodes):  # room for every code up front: chunked adds then never
        index.codes.resize(n * index.code_size)  # reallocate (a growing vector briefly holds two copies)
        index.codes.resize(0)  # the size goes back to 0; std::vector keeps the capacity
    for start in range(0, n, chunk_size):
        index.add(_rows(vectors[start : start + chunk_size], normalize))
    return index


def describe(index: faiss.Index) -> dict[str, Any]:
    """The type and search parameters of an index (those of a CPU index), for the result JSON."""
    info: dict[str, Any] = {"type": type(index).__name__, "ntotal": int(index.ntotal), "gpu": _on_gpu(index)}
    if isinstance(index, faiss.IndexHNSW):
        info.update(m=int(index.hnsw.nb_neighbors(1)), ef_search=int(index.hnsw.efSearch))
    elif isinstance(index, faiss.IndexIVF):
        info.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
        if isinstance(index, faiss.IndexIVFPQ):
            info.update(m=int(index.pq.M), nbits=int(index.pq.nbits))
    return info


def is_exact(index: faiss.Index) -> bool:
    return type(index).__name__ in ("IndexFlatIP", "IndexFlatL2", "GpuIndexFlatIP", "GpuIndexFlatL2")


def search(
    index: faiss.Index, queries: np.ndarray, k: int, chunk_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of (M, D) queries, `chunk_size` at a time: scores (M, k) float32 and ids (M, k) int64,
    best first (largest inner product, or smallest squared L2); id -1 where an approximate index found fewer."""
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


def exact_search(
    vectors: Tensor | np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str = "ip",
    normalize: bool = False,
    chunk_size: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of (M, D) queries over (N, D) vectors read `chunk_size` rows at a time (no index kept):
    scores and ids (M, k), best first."""
    n = len(vectors)
    k = min(k, n)
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric == "ip")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    for start in range(0, n, chunk_size):
        rows = _rows(vectors[start : start + chunk_size], normalize)
        scores, ids = faiss.knn(queries, rows, min(k, len(rows)), metric=METRICS[metric])
        heap.add_result(scores, ids + start)
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k; found and exact are ids (M, k)."""
    if not len(exact):
        return math.nan
    hits = [len(np.intersect1d(a[a >= 0], b)) for a, b in zip(found, exact)]
    return float(np.mean(hits) / exact.shape[1])


def measured_recall(
    index: faiss.Index,
    vectors: Tensor | np.ndarray,
    queries: Tensor | np.ndarray,
    k: int,
    sample: int,
    metric: str = "ip",
    normalize: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall@k of `index` against exact search over `vectors` on up to `sample` seeded (M, D) queries
    (unit-normalised with the vectors when `normalize`), with the index parameters and the sample size.
    A flat index is exact: recall 1 without a search."""
    k = min(k, index.ntotal)
    chosen = np.sort(np.random.default_rng(seed).choice(len(queries), min(sample, len(queries)), replace=False))
    record = {**describe(index), "k": k, "recall_queries": len(chosen)}
    if is_exact(index) or not len(chosen):
        return {**record, f"recall@{k}": 1.0 if len(chosen) else math.nan}
    start = time.perf_counter()
    sampled = _rows(queries[chosen], normalize)
    _, exact = exact_search(vectors, sampled, k, metric, normalize)
    _, found = search(index, sampled, k)
    return {**record, f"recall@{k}": recall_at_k(found, exact), "recall_seconds": round(time.perf_counter() - start, 3)}


def save_index(index: faiss.Index, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index, str(path))
    return path


def load_index(path: str | Path, gpu: bool | None = None) -> faiss.Index:
    index = faiss.read_index(str(path))
    if (gpu_available() if gpu is None else gpu) and not isinstance(index, faiss.IndexHNSW):
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    return index
