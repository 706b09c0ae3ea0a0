"""The main job on bundled data: does distilling from a teacher give a better small model than training
that small model alone?

Three runs on the bundled MNIST digits, at equal steps:
1. an MAE teacher (128-d, 8 blocks);
2. a DMAE student (96-d, 4 blocks) distilled from it;
3. the same student trained as plain MAE from scratch (configs/mae/tiny_mnist_student.yaml).
Both students reconstruct the same target (per-patch normalised pixels, MAE's recommended target; see
docs/methods/dmae.md) with the same decoder, data, optimiser and steps: they differ only by the teacher's
feature-distillation term. Then frozen-feature evaluation on MNIST val (weighted kNN, k = 20; logistic
probe) of the three, a random init of the students' architecture and the raw pixels, with n, training
wall time and images/s beside each row, and the student-minus-scratch difference in one line.

    python -m ssl_distill.demo [--out runs] [--eval-limit N] [key=value ...]   (overrides apply to all runs)

Segmentation transfer is not in this table: these models never see the shapes images in pretraining, so
a column there compares unlike with unlike (a random init scored highest); it lives in the benchmarks.

The one module of `ssl_distill` that imports the separate `eval` package (inside `main`, for its last
step): the demo spans training and evaluation. Nothing else in `ssl_distill` depends on `eval`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ssl_distill.config import load_config
from ssl_distill.engine import TrainResult, train
from ssl_distill.errors import USER_ERRORS, error_line
from ssl_distill.files import write_text_atomic

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the knobs that must be equal between the distilled student and the student trained alone
LIKE_FOR_LIKE = ("model", "data", "optim", "train.max_steps", "train.epochs", "objective.norm_pix_loss",
                 "objective.mask_ratio", "objective.decoder")


def _pick(cfg: Any, dotted: str) -> Any:
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, dotted)
    return OmegaConf.to_container(node, resolve=True) if hasattr(node, "keys") else node


def _run_facts(result: TrainResult) -> dict[str, Any]:
    stats = json.loads((result.run_dir / "run_stats.json").read_text())
    return {"steps": stats["steps"], "train_s": stats["train_seconds"], "images_per_s": stats["images_per_s"]}


def train_runs(out: str, overrides: list[str]) -> dict[str, tuple[Any, TrainResult]]:
    """The three runs: name -> (config, result)."""
    common = [f"run.out_dir={out}", *overrides]
    runs: dict[str, tuple[Any, TrainResult]] = {}
    print("== 1/4 MAE teacher on bundled MNIST ==", flush=True)
    cfg = load_config(CONFIGS / "mae/tiny_mnist.yaml", common)
    runs["MAE teacher"] = (cfg, train(cfg))
    print("== 2/4 DMAE student distilled from it (norm-pix target) ==", flush=True)
    teacher = runs["MAE teacher"][1].run_dir
    cfg = load_config(
        CONFIGS / "dmae/tiny_mnist.yaml", [*common, f"objective.teacher.source={teacher}", "objective.norm_pix_loss=true"]
    )
    runs["DMAE student"] = (cfg, train(cfg))
    print("== 3/4 the same student trained alone: plain MAE from scratch ==", flush=True)
    cfg = load_config(CONFIGS / "mae/tiny_mnist_student.yaml", common)
    runs["MAE student from scratch"] = (cfg, train(cfg))
    student, scratch = runs["DMAE student"][0], runs["MAE student from scratch"][0]
    unequal = [key for key in LIKE_FOR_LIKE if _pick(student, key) != _pick(scratch, key)]
    if unequal:
        raise ValueError(f"demo: the two students differ in {unequal}: the comparison would not be like for like")
    return runs


def evaluate_rows(runs: dict[str, tuple[Any, TrainResult]], out: Path, eval_limit: int | None) -> list[dict[str, Any]]:
    from eval.api import evaluate

    settings = [f"data.limit={eval_limit}"] if eval_limit else []
    student = runs["DMAE student"][1].exported
    rows = []
    backbones = [(name, result.exported, [], result) for name, (_, result) in runs.items()]
    backbones += [
        ("random init (student shape)", student, ["model.weights=none"], None),
        ("raw pixels", "pixels", [], None),
    ]
    for name, backbone, extra, result in backbones:
        folder = out / name.split(" (")[0].replace(" ", "_").lower()
        scores = evaluate(backbone, protocols=("knn", "linear"), overrides=[*settings, *extra], out=folder)
        row = {"backbone": name, "kNN top-1": scores["knn_top1"], "linear top-1": scores["linear_top1"],
               "n (val)": scores["knn_n"]}
        row.update({"steps": "", "train_s": "", "images_per_s": ""} if result is None else _run_facts(result))
        rows.append(row)
    return rows


def comparison(rows: list[dict[str, Any]]) -> dict[str, float]:
    by_name = {row["backbone"]: row for row in rows}
    student, scratch = by_name["DMAE student"], by_name["MAE student from scratch"]
    return {
        "knn_points": 100 * (student["kNN top-1"] - scratch["kNN top-1"]),
        "linear_points": 100 * (student["linear top-1"] - scratch["linear top-1"]),
        "steps": student["steps"],
        "n": student["n (val)"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs", help="folder for the runs (default: runs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N images of each split")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        runs = train_runs(args.out, args.overrides)
        for name, (_, result) in runs.items():
            print(f"{name:25s} run {result.run_dir}  backbone {result.exported}")
        if args.no_eval:
            return 0
        print("== 4/4 frozen-feature evaluation on MNIST val (kNN k=20, logistic probe) ==", flush=True)
        from eval.results import format_table

        rows = evaluate_rows(runs, Path(args.out) / "demo", args.eval_limit)
    except USER_ERRORS as error:
        print(f"demo: error: {error_line(error)}", file=sys.stderr)
        return 2
    diff = comparison(rows)
    print(format_table(rows))
    print(
        f"distillation: {diff['knn_points']:+.1f} kNN, {diff['linear_points']:+.1f} linear points over the same student "
        f"trained alone (same data, {diff['steps']} steps each, norm-pix target; n = {diff['n']} val images)"
    )
    seconds = time.perf_counter() - start
    summary = {"rows": rows, "distillation": diff, "seconds": round(seconds, 1)}
    write_text_atomic(Path(args.out) / "demo" / "summary.json", json.dumps(summary, indent=2))
    print(f"demo finished in {seconds:.0f} s; table in {Path(args.out) / 'demo' / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
