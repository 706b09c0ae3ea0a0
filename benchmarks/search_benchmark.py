"""Search benchmark (issues 14 and 15): exact and approximate nearest neighbours with faiss at scale.

    python benchmarks/search_benchmark.py [--n 1000000] [--queries 10000] [--dim 384] [--threads 2]
                                          [--exact-n 100000] [--kinds flat ivf ivfpq hnsw] [--datasets clustered random]
                                          [--quick] [--out DIR]

1. Approximate search (issue 15). Two synthetic banks of N unit vectors and M queries from the same
   distribution: `random` (i.i.d. Gaussian directions with random labels of 100 classes: full intrinsic
   dimension, the worst case for any index) and `clustered` (a Gaussian mixture of 1,000 components in
   32 dimensions, centres ~ N(0, I), spread 1.2, mapped into D dimensions by a random orthonormal map
   plus 5% isotropic noise, then unit-normalised; label = component % 100. Its low intrinsic dimension
   is that of real embeddings, and its overlapping components make exact kNN top-1 about 0.7).
   Each index kind is built from the memory-mapped bank through
   `eval.search.build_index` (IVF cells k-means-trained on a sample) and searched for k = 20 with a
   sweep of its search parameter. Columns: build and query seconds (all M queries), speed-up of the query
   over flat, recall@10 against the flat index's top 10, weighted kNN top-1 (k = 20, T = 0.07, the
   eval.knn vote) and its difference from flat's in points, the index file size, the peak RSS of the
   building process (it maps the whole bank), and the peak RSS of a fresh process that loads the saved
   index and answers 1,000 of the queries ("serve RSS", at the middle search setting).
2. Exact kNN, one thread (issue 14): faiss IndexFlatIP (add + search) against torch.mm + topk over query
   chunks of 1,024 (lightly / solo-learn / dinov2 style) at --exact-n x M x D, k = 20: seconds, peak RSS,
   and the matrix-product bound 2 N M D / (the GEMM rate torch.mm reaches on this machine, one thread).
3. kNN memory (issue 14): `eval.knn.knn_rank` on the clustered bank held in RAM: peak RSS against the
   bank and one flat index.
4. Import time (issue 14): `import torch, faiss` and `import torch, faiss, eval.knn`, median of 5 fresh
   processes each.

Every number comes from one run (one process per measurement, so peak RSS is that measurement's own);
import times are medians. `--quick` (small sizes, in a few seconds) is the smoke test's setting.
Writes <out>/search_benchmark.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SWEEP = {"flat": ("", [0]), "ivf": ("nprobe", [16, 64, 256]), "ivfpq": ("nprobe", [16, 64, 256]), "hnsw": ("efSearch", [32, 128, 512])}
K, T, CLASSES, SERVED = 20, 0.07, 100, 1000
DATASETS = ("clustered", "random")
RANK, SPREAD, NOISE = 32, 1.2, 0.05  # the clustered set: intrinsic dimension, component spread, isotropic noise


@dataclass(frozen=True)
class Setting:
    n: int = 1_000_000
    queries: int = 10_000
    dim: int = 384
    exact_n: int = 100_000
    components: int = 1000
    nlist: int | None = 2048  # None: eval.search's default, 4 sqrt(N)
    m_pq: int = 48
    nbits: int = 8
    m_hnsw: int = 32
    threads: int = 2


QUICK = Setting(n=20_000, queries=500, dim=64, exact_n=5_000, components=100, nlist=64, m_pq=16, nbits=5, m_hnsw=16)
QUICK_SWEEP = {"flat": ("", [0]), "ivf": ("nprobe", [4, 16, 64]), "ivfpq": ("nprobe", [4, 16, 64]), "hnsw": ("efSearch", [16, 64, 256])}


# -- measurements run in their own process ----------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status")


def _threads(count: int) -> None:
    import faiss
    import torch

    faiss.omp_set_num_threads(count)
    torch.set_num_threads(count)


def work_build(job: dict[str, Any]) -> dict[str, Any]:
    """Build one index from the memory-mapped bank, save it, search with each sweep value."""
    import faiss

    from eval.search import IndexSpec, build_index, search

    _threads(job["threads"])
    bank = np.load(job["bank"], mmap_mode="r")
    queries = np.load(job["queries"])
    reset_peak_rss()
    start = time.perf_counter()
    index = build_index(bank, "ip", gpu=False, spec=IndexSpec(**job["spec"]))
    result = {"build_s": time.perf_counter() - start, "build_rss_mb": peak_rss_mb()}
    faiss.write_index(index, job["index"])
    result["index_mb"] = os.path.getsize(job["index"]) / 2**20
    name, values = job["sweep"]
    result["query_s"] = {}
    for value in values:
        if name:
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        start = time.perf_counter()
        scores, ids = search(index, queries, K)
        result["query_s"][str(value)] = time.perf_counter() - start
        np.savez(f"{job['index']}.{value}.npz", scores=scores, ids=ids)
    return result


def work_serve(job: dict[str, Any]) -> dict[str, Any]:
    """A fresh process: load a saved index and answer the queries; its peak RSS."""
    import faiss

    from eval.search import search

    _threads(job["threads"])
    index = faiss.read_index(job["index"])
    name, value = job["param"]
    if name:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
    start = time.perf_counter()
    search(index, np.load(job["queries"])[:SERVED], K)
    return {"serve_s": time.perf_counter() - start, "serve_rss_mb": peak_rss_mb()}


def work_exact(job: dict[str, Any]) -> dict[str, Any]:
    """Exact top-k over the first `n` bank rows held in RAM: faiss flat (add + search) or torch.mm + topk."""
    import faiss
    import torch

    _threads(1)
    bank = np.array(np.load(job["bank"], mmap_mode="r")[: job["n"]])
    queries = np.load(job["queries"])
    reset_peak_rss()
    start = time.perf_counter()
    if job["method"] == "faiss":
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(bank)
        index.search(queries, K)
    else:
        bank_t, queries_t = torch.from_numpy(bank), torch.from_numpy(queries)
        for chunk in queries_t.split(1024):
            torch.topk(chunk @ bank_t.T, K, dim=1)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def work_gemm(job: dict[str, Any]) -> dict[str, Any]:
    """GFLOP/s of torch.mm, one thread, best of 5: (4096 x D) @ (D x 20000)."""
    import torch

    _threads(1)
    a, b = torch.randn(4096, job["dim"]), torch.randn(job["dim"], 20_000)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return {"gflops": 2 * 4096 * job["dim"] * 20_000 / best / 1e9}


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def work_knn(job: dict[str, Any]) -> dict[str, Any]:
    """eval.knn.knn_rank (exact, k = 20) on the bank held in RAM: baseline, data and peak RSS."""
    import torch

    from eval.knn import knn_rank

    _threads(job["threads"])
    baseline = rss_mb()
    bank = torch.from_numpy(np.array(np.load(job["bank"], mmap_mode="r")))
    labels = torch.from_numpy(np.load(job["labels"]))
    queries = torch.from_numpy(np.load(job["queries"]))
    loaded = rss_mb()
    start = time.perf_counter()
    knn_rank(bank, labels, queries, [K], CLASSES)
    return {"seconds": time.perf_counter() - start, "baseline_rss_mb": baseline, "loaded_rss_mb": loaded, "peak_rss_mb": peak_rss_mb()}


WORKERS = {"build": work_build, "serve": work_serve, "exact": work_exact, "gemm": work_gemm, "knn": work_knn}


def run_worker(job: dict[str, Any], in_process: bool) -> dict[str, Any]:
    """A measurement in a fresh Python process (its own peak RSS), or here with `in_process` (--quick)."""
    if in_process:
        return WORKERS[job["worker"]](job)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise RuntimeError(f"worker {job['worker']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- data --------------------------------------------------------------------------------------------


def write_data(folder: Path, kind: str, setting: Setting, seed: int = 0) -> dict[str, Path]:
    """Bank (N, D), queries (M, D) float32 unit rows and labels, written once (memory-mapped, in chunks)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{kind}_{setting.n}x{setting.dim}_{name}.npy" for name in ("bank", "labels", "queries", "query_labels")}
    if all(path.is_file() for path in paths.values()):
        return paths
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((setting.components, RANK), dtype=np.float32)
    embed = np.linalg.qr(rng.standard_normal((setting.dim, RANK)))[0].astype(np.float32)  # (D, RANK) orthonormal

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        noise = rng.standard_normal((count, setting.dim), dtype=np.float32)
        if kind == "random":
            return noise / np.linalg.norm(noise, axis=1, keepdims=True), rng.integers(0, CLASSES, count)
        component = rng.integers(0, setting.components, count)
        z = centres[component] + SPREAD * rng.standard_normal((count, RANK), dtype=np.float32)
        x = z @ embed.T + NOISE * np.linalg.norm(z, axis=1, keepdims=True) * noise / np.sqrt(setting.dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True), component % CLASSES

    for rows, vectors, labels in ((setting.n, "bank", "labels"), (setting.queries, "queries", "query_labels")):
        out = np.lib.format.open_memmap(str(paths[vectors]) + ".tmp", mode="w+", dtype=np.float32, shape=(rows, setting.dim))
        tags = np.empty(rows, dtype=np.int64)
        for start in range(0, rows, 100_000):
            out[start : start + 100_000], tags[start : start + 100_000] = draw(min(100_000, rows - start))
        out.flush()
        del out
        os.replace(str(paths[vectors]) + ".tmp", paths[vectors])
        np.save(paths[labels], tags)
    return paths


# -- tables ------------------------------------------------------------------------------------------


def knn_top1(scores: np.ndarray, ids: np.ndarray, bank_labels: np.ndarray, query_labels: np.ndarray) -> float:
    import torch

    from eval.knn import weighted_vote

    found = ids >= 0
    sims = torch.from_numpy(np.where(found, scores, -np.inf))
    votes = weighted_vote(sims, torch.from_numpy(bank_labels[np.where(found, ids, 0)]), CLASSES, T)
    return float((votes.argmax(1).numpy() == query_labels).mean())


def search_table(
    setting: Setting, data: Path, work: Path, kinds: list[str], quick: bool, datasets: tuple[str, ...] = DATASETS
) -> list[dict[str, Any]]:
    sweeps = QUICK_SWEEP if quick else SWEEP
    from eval.search import IndexSpec, recall_at_k

    rows = []
    for kind in datasets:
        paths = write_data(data, kind, setting)
        bank_labels, query_labels = np.load(paths["labels"]), np.load(paths["query_labels"])
        exact = None
        for index_kind in ["flat", *[k for k in kinds if k != "flat"]]:
            m = setting.m_hnsw if index_kind == "hnsw" else setting.m_pq
            spec = IndexSpec(index_kind, nlist=setting.nlist, m=m, nbits=setting.nbits)
            index_path = work / f"{kind}_{index_kind}.faiss"
            name, values = sweeps[index_kind]
            built = run_worker(
                {"worker": "build", "bank": str(paths["bank"]), "queries": str(paths["queries"]), "index": str(index_path),
                 "spec": asdict(spec), "sweep": [name, values], "threads": setting.threads}, quick,
            )
            served = run_worker(
                {"worker": "serve", "index": str(index_path), "queries": str(paths["queries"]), "threads": setting.threads,
                 "param": [name, values[len(values) // 2]]}, quick,
            )
            for value in values:
                found = np.load(f"{index_path}.{value}.npz")
                if exact is None:
                    exact = found["ids"][:, :10], built["query_s"]["0"], knn_top1(found["scores"], found["ids"], bank_labels, query_labels)
                top1 = knn_top1(found["scores"], found["ids"], bank_labels, query_labels)
                row = {
                    "data": kind, "index": index_kind, "param": f"{name}={value}" if name else "",
                    "n": setting.n, "queries": setting.queries,
                    "build_s": built["build_s"], "query_s": built["query_s"][str(value)],
                    "speedup": exact[1] / built["query_s"][str(value)],
                    "recall@10": recall_at_k(found["ids"][:, :10], exact[0]),
                    "knn_top1": top1, "top1_diff_pts": 100 * (top1 - exact[2]),
                    "index_mb": built["index_mb"], "build_rss_mb": built["build_rss_mb"],
                    "serve_rss_mb": served["serve_rss_mb"] if value == values[len(values) // 2] else None,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            for leftover in work.glob(f"{kind}_{index_kind}.faiss*"):
                leftover.unlink()
    return rows


def exact_table(setting: Setting, data: Path, quick: bool) -> dict[str, Any]:
    paths = write_data(data, "clustered", setting)
    gemm = run_worker({"worker": "gemm", "dim": setting.dim}, quick)["gflops"]
    flops = 2 * setting.exact_n * setting.queries * setting.dim
    rows = []
    for method in ("faiss", "torch"):
        measured = run_worker({"worker": "exact", "method": method, "n": setting.exact_n, "bank": str(paths["bank"]), "queries": str(paths["queries"])}, quick)
        rows.append({"method": "faiss IndexFlatIP" if method == "faiss" else "torch.mm + topk", "n": setting.exact_n, "queries": setting.queries,
                     "seconds": measured["seconds"], "peak_rss_mb": measured["peak_rss_mb"], "bound_s": flops / gemm / 1e9,
                     "x_bound": measured["seconds"] / (flops / gemm / 1e9)})
    return {"gemm_gflops": gemm, "flops": flops, "rows": rows, "faiss_speedup": rows[1]["seconds"] / rows[0]["seconds"]}


def knn_memory(setting: Setting, data: Path, quick: bool) -> dict[str, Any]:
    paths = write_data(data, "clustered", setting)
    measured = run_worker({"worker": "knn", "bank": str(paths["bank"]), "labels": str(paths["labels"]), "queries": str(paths["queries"]), "threads": setting.threads}, quick)
    data_mb = setting.n * setting.dim * 4 / 2**20
    used = measured["peak_rss_mb"] - measured["baseline_rss_mb"]
    return {**measured, "n": setting.n, "data_mb": data_mb, "index_mb": data_mb, "peak_over_baseline_mb": used, "copies_of_the_bank": used / data_mb}


def import_times(repeats: int = 5) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    times = {}
    for name, code in (("torch_faiss_s", "import torch, faiss"), ("torch_faiss_eval_knn_s", "import torch, faiss, eval.knn")):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            runs.append(time.perf_counter() - start)
        times[name] = statistics.median(runs)
    times["eval_knn_over_torch_faiss_s"] = times["torch_faiss_eval_knn_s"] - times["torch_faiss_s"]
    return times


def _table(rows: list[dict[str, Any]]) -> str:
    from eval.results import format_table

    return format_table([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()} for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=Setting.n)
    parser.add_argument("--queries", type=int, default=Setting.queries)
    parser.add_argument("--dim", type=int, default=Setting.dim)
    parser.add_argument("--exact-n", type=int, default=Setting.exact_n)
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--threads", type=int, default=Setting.threads)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw"], choices=list(SWEEP))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--quick", action="store_true", help="small sizes, measured in this process: a smoke check")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "search")
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(WORKERS[job["worker"]](job)))
        return 0
    setting = QUICK if args.quick else Setting(args.n, args.queries, args.dim, args.exact_n, nlist=args.nlist, threads=args.threads)
    if args.quick:
        setting = replace(setting, threads=1)
    data, work = args.out / "data", args.out / "indexes"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["search_benchmark.py", *argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "setting": asdict(setting),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    record["search"] = search_table(setting, data, work, args.kinds, args.quick, tuple(args.datasets))
    record["exact"] = exact_table(setting, data, args.quick)
    record["knn_memory"] = knn_memory(setting, data, args.quick)
    record["imports"] = {} if args.quick else import_times()
    record["seconds"] = time.perf_counter() - started
    record["machine"]["load_average_at_end"] = os.getloadavg()  # other jobs on the same cores
    path = args.out / "search_benchmark.json"
    path.write_text(json.dumps(record, indent=1))
    print(_table(record["search"]), end="\n\n")
    print(f"exact kNN, one thread, GEMM {record['exact']['gemm_gflops']:.1f} GFLOP/s")
    print(_table(record["exact"]["rows"]), end="\n\n")
    print(_table([record["knn_memory"]]), end="\n\n")
    if record["imports"]:
        print(_table([record["imports"]]), end="\n\n")
    print(f"wrote {path} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
