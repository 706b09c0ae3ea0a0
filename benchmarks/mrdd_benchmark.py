"""MRDD benchmark (issue 13): consistent vs specific vs combined representations vs single-view baselines
on EdgeMNIST-5k (digit + edge views; 4,000 train / 1,000 val).

    python benchmarks/mrdd_benchmark.py [--steps1 N] [--steps2 N] [--seed S] [--quick] [--out DIR]

Rows (every trained encoder sees the train split only; scores are on the held-out val split):
  MRDD consistent   c of the stage-1 encoder (configs/mrdd/tiny_edge_mnist.yaml, both views)
  MRDD specific     s_0, the digit view's specific code after stage 2 (tiny_edge_mnist_stage2.yaml)
  MRDD combined     [c, s_0], the paper's fused representation
  single-view VAE   the same stage-1 model and budget on the digit view alone (masked self-prediction)
  pixels            the raw digit pixels (1,024-d)
Columns: k-means (k = 10, 3 runs) clustering accuracy (Hungarian), NMI and ARI on val features; linear
probe top-1 (logistic regression, C swept on a held-out part of train, train -> val).
The paper's claim: combined is best.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from eval.api import run_protocol
from eval.cluster import kmeans_scores
from eval.linear import logistic_probe
from eval.results import format_table
from ssl_distill.config import load_config
from ssl_distill.data import build_source
from ssl_distill.engine import train
from ssl_distill.runtime import cpu_threads

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mrdd"


@dataclass(frozen=True)
class Setting:
    data: str = "edge_mnist"
    steps1: int = 300
    steps2: int = 200
    batch_size: int = 64
    limit: int | None = None
    kmeans_runs: int = 3
    seed: int = 0


DEFAULT = Setting()
QUICK = Setting(data="edge_digits", steps1=4, steps2=3, batch_size=32, limit=128, kmeans_runs=1)


def _train(config: str, out: Path, name: str, s: Setting, steps: int, *overrides: str) -> tuple[Path, float, float]:
    cfg = load_config(CONFIGS / config, [
        f"run.out_dir={out}", f"run.name={name}", f"run.seed={s.seed}", f"data.name={s.data}",
        f"data.batch_size={s.batch_size}", f"train.max_steps={steps}", "train.progress=false",
        "train.tensorboard=false", "train.log_every=10", "train.resume=false",
        *([f"data.limit={s.limit}"] if s.limit else []), *overrides,
    ])
    start = time.perf_counter()
    result = train(cfg)
    return result.run_dir, time.perf_counter() - start, float(np.mean(result.losses[-10:]))


def _scores(backbone: Path, pooling: str, s: Setting, out: Path, *data: str) -> dict[str, float]:
    settings = ["run.progress=false", f"cluster.runs={s.kmeans_runs}", f"cluster.seed={s.seed}",
                *([f"data.limit={s.limit}"] if s.limit else []), *data]
    cluster, _ = run_protocol("cluster", str(backbone), s.data, [*settings, f"cluster.pooling={pooling}"], out)
    linear, _ = run_protocol("linear", str(backbone), s.data, [*settings, f"linear.pooling={pooling}"], out)
    return {**{k: cluster.metrics[k] for k in ("acc", "nmi", "ari")}, "linear_top1": linear.metrics["top1"],
            "n_val": cluster.details["n"]["val"]}


def _pixel_scores(s: Setting) -> dict[str, float]:
    def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        source = build_source(s.data, split=split, limit=s.limit, views=["digit"])
        items = [source[i] for i in range(len(source))]
        return np.stack([i["views"][0].flatten().numpy() for i in items]), np.array([i["label"] for i in items])

    (train_x, train_y), (val_x, val_y) = arrays("train"), arrays("val")
    clusters = kmeans_scores(val_x, val_y, 10, s.kmeans_runs, seed=s.seed)
    proba, _ = logistic_probe(train_x, train_y, val_x, 10)
    top1 = float((proba.argmax(1) == val_y).mean())
    return {**{k: float(np.mean(v)) for k, v in clusters.items()}, "linear_top1": top1, "n_val": len(val_y)}


def run(s: Setting, out: Path, command: str) -> dict[str, Any]:
    start = time.perf_counter()
    runs, evals = out / "runs", out / "eval"
    stage1, t1, loss1 = _train("tiny_edge_mnist.yaml", runs, "stage1", s, s.steps1)
    stage2, t2, loss2 = _train("tiny_edge_mnist_stage2.yaml", runs, "stage2", s, s.steps2, f"objective.consistency={stage1}")
    single, t3, loss3 = _train("tiny_edge_mnist.yaml", runs, "single_view", s, s.steps1,
                               "model.num_views=1", "data.options.views=[digit]")
    rows = []
    for row, backbone, pooling, data, seconds, loss in (
        ("MRDD consistent", stage2, "consistent", [], t1, loss1),
        ("MRDD specific", stage2, "specific", [], t2, loss2),
        ("MRDD combined", stage2, "combined", [], t1 + t2, loss2),
        ("single-view VAE", single, "consistent", ["data.options.views=[digit]"], t3, loss3),
    ):
        scores = _scores(backbone / "backbone.safetensors", pooling, s, evals / row.replace(" ", "_"), *data)
        rows.append({"representation": row, "train_s": round(seconds), "final_loss": loss, **scores})
    rows.append({"representation": "pixels (digit)", "train_s": 0, "final_loss": None, **_pixel_scores(s)})
    return {"setting": asdict(s), "command": command, "rows": rows, "seconds": time.perf_counter() - start}


def table(rows: list[dict[str, Any]]) -> str:
    columns = {"representation": "representation", "acc": "k-means ACC", "nmi": "NMI", "ari": "ARI",
               "linear_top1": "linear top-1", "n_val": "n val", "train_s": "train s", "final_loss": "final loss"}
    return format_table([{columns[k]: row.get(k) for k in columns} for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps1", type=int, help=f"stage-1 (and single-view) steps (default {DEFAULT.steps1})")
    parser.add_argument("--steps2", type=int, help=f"stage-2 steps (default {DEFAULT.steps2})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="sklearn digits, a few steps: a smoke check")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/mrdd"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    s = replace(QUICK if args.quick else DEFAULT, seed=args.seed)
    s = replace(s, steps1=args.steps1 or s.steps1, steps2=args.steps2 or s.steps2)
    with cpu_threads(args.threads):
        record = run(s, args.out, shlex.join(["python", "benchmarks/mrdd_benchmark.py", *argv]))
    path = args.out / "mrdd_benchmark.json"
    path.write_text(json.dumps(record, indent=2))
    print(table(record["rows"]))
    print(f"{record['seconds']:.0f} s; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
