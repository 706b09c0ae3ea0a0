"""Patch-level distillers benchmark (issue 12), two parts on generated data, CPU-sized.

    python benchmarks/patch_distill_benchmark.py --part cmd   [--steps N] [--seed S] [--quick] [--out DIR]
    python benchmarks/patch_distill_benchmark.py --part cotap [--steps N] [--continue-steps M] [--seed S] [--quick]

cmd: CMD against DINO on `shapes_fine` (8 classes that differ only in two small marks). Both train the
  same tiny ViT (32 px, patch 4, dim 96, depth 4) for the same optimizer steps on the same train split
  with the same multi-crop (2 x 32 + 4 x 16 px), heads, EMA, temperatures and optimizer
  (configs/dino/tiny_mnist.yaml with CMD's teacher-temperature warmup 0.04 -> 0.07 and student
  `norm_last_layer: false`, and configs/cmd/tiny_shapes_fine.yaml); the CPU seconds each took are
  reported beside the scores.
  The EMA teachers are evaluated frozen, with the class token (`cls`) and the mean patch token (`mean`,
  CMD's view token): weighted kNN top-1 (k=20, bank train, queries test), linear-probe top-1 (train ->
  test) and CMD's retrieval protocol (queries every 9th test image, gallery train + the other test
  images: Rank-1, Rank-5, mAP@100). A random init of the same ViT is the floor.
cotap: CoTAP continued from a DINO checkpoint against that checkpoint on `shapes_scenes` (multi-object
  scenes with masks). One DINO run of N + M steps is saved at step N (the checkpoint) and at N + M
  (DINO continued for the same M steps: the control for "more training"); the nearest-neighbour file
  comes from the step-N teacher (`ssl-eval knn-pairs`, mean-pooled, top 30); CoTAP trains M steps from
  the step-N teacher. Evaluated: linear segmentation transfer mIoU on the backbone patch tokens (train
  -> test) and kNN top-1 on the class token (bank train, queries test; the label is the largest object).

Everything runs with `--threads` CPU threads (default 1); `train cpu s` is process CPU time, which
stays meaningful on shared cores where wall time does not.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from eval.api import run_protocol
from eval.results import format_table
from ssl_distill.backbones import build_backbone, load_backbone
from ssl_distill.checkpoints import checkpoint_path
from ssl_distill.config import load_config
from ssl_distill.data import seeded_call
from ssl_distill.engine import train
from ssl_distill.runtime import cpu_threads

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Setting:
    steps: int  # cmd: steps per method; cotap: DINO steps before CoTAP starts
    continue_steps: int  # cotap: steps of CoTAP and of DINO's continuation
    batch_size: int
    limit: int | None  # images per split (None: all)
    segment_epochs: int
    top: int  # neighbours per image in the NNS file (the image itself first)
    seed: int = 0


DEFAULT = Setting(steps=240, continue_steps=80, batch_size=64, limit=None, segment_epochs=10, top=30)
QUICK = Setting(steps=3, continue_steps=2, batch_size=16, limit=96, segment_epochs=1, top=8)


def loop(s: Setting, out: Path, name: str, steps: int, checkpoint_every: int = 0) -> list[str]:
    return [
        f"run.out_dir={out}", f"run.name={name}", f"run.seed={s.seed}", f"data.batch_size={s.batch_size}",
        f"data.limit={s.limit if s.limit is not None else 'null'}", f"train.max_steps={steps}",
        f"train.checkpoint_every={checkpoint_every}", "train.keep_checkpoints=5", "train.resume=false",
        "train.progress=false", "train.tensorboard=false", f"train.log_every={max(1, steps // 10)}",
    ]


def trained(config: str, overrides: list[str]) -> tuple[Any, float]:
    """Train from scratch (an old run directory is removed); returns the result and the CPU seconds."""
    cfg = load_config(CONFIGS / config, overrides)
    shutil.rmtree(Path(cfg.run.out_dir) / cfg.run.name, ignore_errors=True)
    print(f"== train {cfg.run.name} ({config}, {cfg.train.max_steps} steps)", flush=True)
    tic = time.process_time()
    result = train(cfg)
    return result, time.process_time() - tic


def random_like(source: Path, seed: int) -> torch.nn.Module:
    spec = load_backbone(source).spec
    return seeded_call(seed, lambda: build_backbone(spec))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def evaluate(backbone: Any, data: str, s: Setting, out: Path, protocols: dict[str, list[str]]) -> dict[str, Any]:
    """name -> [protocol, settings...]: each protocol's Result for one frozen backbone (JSON into `out`)."""
    limit = [f"data.limit={s.limit}"] if s.limit is not None else []
    return {
        name: run_protocol(protocol, backbone, data, [*limit, "run.progress=false", *settings], out)[0]
        for name, (protocol, *settings) in protocols.items()
    }


def cmd_part(s: Setting, out: Path) -> dict[str, Any]:
    common = ["data.name=shapes_fine", "data.transform.n_local_views=4"]
    # DINO with CMD's (official) teacher temperature schedule and student head: the runs differ only in the loss
    as_cmd = ["objective.teacher_temp=0.07", "objective.warmup_teacher_temp_fraction=0.1", "objective.norm_last_layer=false"]
    runs = {
        "DINO": trained("dino/tiny_mnist.yaml", [*common, *as_cmd, *loop(s, out / "runs", "dino", s.steps)]),
        "CMD": trained("cmd/tiny_shapes_fine.yaml", [*common, *loop(s, out / "runs", "cmd", s.steps)]),
    }
    backbones = {name: result.exported for name, (result, _) in runs.items()}
    backbones["random init"] = random_like(backbones["DINO"], s.seed)
    rows = []
    for name, backbone in backbones.items():
        for pooling in ("cls", "mean"):
            print(f"== evaluate {name} ({pooling})", flush=True)
            results = evaluate(backbone, "shapes_fine", s, out / "eval" / slug(f"{name} {pooling}"), {
                "knn": ["knn", "knn.query_split=test", f"knn.pooling={pooling}"],
                "linear": ["linear", "linear.eval_split=test", f"linear.pooling={pooling}"],
                "retrieve": ["retrieve", "retrieve.protocol=cmd", "retrieve.query_split=test", "retrieve.ks=[1,5]",
                             f"retrieve.pooling={pooling}"],
            })
            retrieval = results["retrieve"]
            result, cpu = runs.get(name, (None, 0.0))
            rows.append({
                "model": name, "pooling": pooling, "steps": s.steps if result else 0, "train_cpu_s": round(cpu),
                "final_loss": round(sum(result.losses[-10:]) / len(result.losses[-10:]), 4) if result else None,
                "knn_top1": results["knn"].metrics["top1"], "linear_top1": results["linear"].metrics["top1"],
                "rank1": retrieval.metrics["recall@1"], "rank5": retrieval.metrics["recall@5"],
                "map100": retrieval.metrics["map@100"],
                "n": f"{results['knn'].details['queries']} / {retrieval.details['queries']} q, "
                     f"{retrieval.details['gallery_size']} g",
            })
    return {"rows": rows}


def cotap_part(s: Setting, out: Path) -> dict[str, Any]:
    total = s.steps + s.continue_steps
    common = ["data.name=shapes_scenes", "data.transform.n_local_views=2"]
    dino, dino_cpu = trained("dino/tiny_mnist.yaml", [*common, *loop(s, out / "runs", "dino", total, s.steps)])
    start = checkpoint_path(dino.run_dir / "checkpoints", s.steps)
    nns = out / "nns" / f"nns_dino_step{s.steps}_shapes_scenes_train_None_32.npz"
    pairs, _ = run_protocol("knn-pairs", str(start), "shapes_scenes", [
        *([f"data.limit={s.limit}"] if s.limit is not None else []), "run.progress=false",
        f"knn_pairs.top={s.top}", f"knn_pairs.file={nns}", "knn_pairs.report_ks=[1,5]",
    ], out / "eval" / "pairs")
    cotap, cotap_cpu = trained("cotap/tiny_shapes_scenes.yaml", [
        f"objective.init={start}", f"data.options.file={nns}", *loop(s, out / "runs", "cotap", s.continue_steps),
    ])
    backbones = {
        "random init": (random_like(start, s.seed), 0, 0.0),
        f"DINO @ {s.steps} (CoTAP's start)": (start, s.steps, dino_cpu * s.steps / total),
        f"DINO @ {total} (continued)": (dino.exported, total, dino_cpu),
        f"CoTAP @ {s.steps} + {s.continue_steps}": (cotap.exported, total, dino_cpu * s.steps / total + cotap_cpu),
    }
    rows = []
    for name, (backbone, steps, cpu) in backbones.items():
        print(f"== evaluate {name}", flush=True)
        results = evaluate(backbone, "shapes_scenes", s, out / "eval" / slug(name), {
            "segment": ["segment", "segment.eval_split=test", f"segment.epochs={s.segment_epochs}"],
            "knn": ["knn", "knn.query_split=test", "knn.pooling=cls"],
        })
        rows.append({
            "model": name, "steps": steps, "train_cpu_s": round(cpu),
            "segment_miou": results["segment"].metrics["miou"], "pixel_acc": results["segment"].metrics["pixel_accuracy"],
            "knn_top1": results["knn"].metrics["top1"],
            "n": f"{len(results['segment'].details['iou'])} classes, {results['knn'].details['queries']} q",
        })
    return {"rows": rows, "neighbours": {**pairs.metrics, "images": pairs.details["images"], "file": str(nns)}}


COLUMNS = {
    "cmd": ["model", "pooling", "steps", "train_cpu_s", "knn_top1", "linear_top1", "rank1", "rank5", "map100", "n"],
    "cotap": ["model", "steps", "train_cpu_s", "segment_miou", "pixel_acc", "knn_top1", "n"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("cmd", "cotap"), required=True)
    parser.add_argument("--steps", type=int, help=f"cmd: steps per method; cotap: DINO steps before CoTAP (default {DEFAULT.steps})")
    parser.add_argument("--continue-steps", type=int, help=f"cotap: CoTAP / DINO continuation steps (default {DEFAULT.continue_steps})")
    parser.add_argument("--seed", type=int, default=0, help="seeds training and the random init")
    parser.add_argument("--quick", action="store_true", help="a tiny setting: a smoke check")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="default runs/benchmarks/patch_<part>")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    s = replace(QUICK if args.quick else DEFAULT, seed=args.seed)
    s = replace(s, steps=args.steps or s.steps, continue_steps=args.continue_steps or s.continue_steps)
    out = args.out or Path(f"runs/benchmarks/patch_{args.part}")
    tic, cpu = time.perf_counter(), time.process_time()
    with cpu_threads(args.threads):
        record = (cmd_part if args.part == "cmd" else cotap_part)(s, out)
    record = {
        "benchmark": f"patch_distill/{args.part}",
        "command": shlex.join(["python", "benchmarks/patch_distill_benchmark.py", *argv]),
        "setting": asdict(s), "threads": args.threads,
        "wall_s": round(time.perf_counter() - tic), "cpu_s": round(time.process_time() - cpu), **record,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"patch_distill_{args.part}.json"
    path.write_text(json.dumps(record, indent=2))
    print(format_table([{key: row[key] for key in COLUMNS[args.part]} for row in record["rows"]]))
    if "neighbours" in record:
        print(f"neighbour file: {json.dumps(record['neighbours'])}")
    print(f"{record['wall_s']} s wall, {record['cpu_s']} s CPU; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
