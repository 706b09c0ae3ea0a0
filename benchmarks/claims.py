"""Every paper's claim, honestly (issue 14, item 7): each objective against the baselines its paper beats,
on bundled or generated data, with one budget per section for every method in it (the same optimizer
steps, batch and student shape), at several seeds, reported as mean +- 95% interval (Student's t over
seeds) beside a random-init row and a raw-pixel row.

    python benchmarks/claims.py [--sections mae dmae ...] [--seeds 3] [--steps N] [--quick] [--out DIR]
    python benchmarks/claims.py --combine A/claims.json B/claims.json --out DIR   # sections run separately

A claim is "method beats baseline on metric". Its verdict is "reproduces" only when the two 95% intervals
separate in the paper's direction, "does not reproduce" when they separate the other way, "inconclusive"
otherwise (overlapping intervals: this many seeds at this budget cannot tell). Beside each verdict: whether
the method and the baseline each beat the random init (their interval above every random-init row's); where
neither does, the claim compares two floors and says nothing about the methods, whatever its verdict.

Sections (the methods train with the same steps and batch; every score is on a frozen backbone through the
eval package; `n` is the number of seeds; the pixel rows are deterministic, evaluated once, n = 1):
  mae     MAE student vs random init. Bundled MNIST (4,000 train / 1,000 val); student ViT 96-d x 4 blocks,
          32 px, patch 4, batch 64; kNN top-1 (k 20, T 0.07) and linear-probe top-1 (eval.api.evaluate).
  dmae    DMAE vs the MAE student at equal student steps; the DMAE teacher is an MAE 128-d x 8 trained per
          seed for `teacher_steps` (not counted in the student's budget, as in the paper).
  g2sd    G2SD generic stage vs the MAE student, frozen (the paper's headline is fine-tuning; the frozen
          generic-stage comparison is what this script measures, see benchmarks/mae_distillers.py for the
          fine-tuned one).
  hybrid  Hybrid Distillation vs DMAE (same MAE teacher, plus a supervised 128-d x 8 teacher).
  dino    DINO (2 x 32 + 4 x 16 px crops) vs random init, same MNIST student and eval.
  cmd     CMD vs DINO on shapes_fine (benchmarks/patch_distill_benchmark.py, part cmd): each with its own
          token (CMD the mean patch token, DINO the class token), retrieval Rank-1 and mAP@100.
  cotap   CoTAP continued from a DINO checkpoint vs that checkpoint (and vs DINO continued for the same
          steps) on shapes_scenes: segmentation mIoU (benchmarks/patch_distill_benchmark.py, part cotap).
  mrdd    MRDD combined [c, s] vs consistent c and specific s: k-means ACC / NMI on EdgeMNIST val
          (benchmarks/mrdd_benchmark.py).
  tips    TIPS vs CLIP-only on shapes_text: segmentation mIoU (benchmarks/tips_benchmark.py); zero-shot and
          retrieval are reported (the paper claims no loss there, which an interval test cannot confirm).
  echo    DISCOVR vs VideoMAE and image DINO on generated echo videos (benchmarks/echo_benchmark.py) with
          1,024 videos in full mode (128 test, 128 val, 768 train: one video moves a test score by < 1%);
          zero-shot anomaly balanced accuracy, EF R^2, LV Dice. The seed also seeds the generated set.
          No pixel row: the raw-pixel baseline is image-only.

On digits-like data the raw pixels beat every backbone at a small budget: at 400 steps the MNIST pixels
score 0.933 kNN / 0.919 linear top-1, every trained ViT 0.43-0.47 kNN / 0.78-0.83 linear (random init 0.42 /
0.77; benchmarks/results/claims.json). The tables show it, and each section lists the rows whose interval
lies wholly below the pixels' (`below_pixels` in the JSON).

Output: the tables, and `<out>/claims.json`: command, machine (with the load average at start and end),
created, seeds, the sections run and the budget of each, rows (mean, ci95, n, values per metric) and claims
(with verdicts). Every section carries its own command, mode, threads, time and load
average, so sections run separately (in parallel, or at different `--steps`) can be put in one file with
`--combine`. Training runs go to `--work` (finished runs are reused: delete the folder to start over).
`--quick` is a smoke check (a few steps, small eval slices, 2 seeds allowed); `--steps` scales every section
down (a reduced budget, recorded as such). The full run is sized for a few CPU hours on one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from scipy import stats

from eval.api import evaluate, run_protocol
from eval.results import format_table
from ssl_distill.runtime import cpu_threads

HERE = Path(__file__).resolve().parent
VERDICTS = ("reproduces", "does not reproduce", "inconclusive")
PIXELS = "pixels"
RANDOM = "random init"


def _sibling(name: str) -> ModuleType:
    """Another script of benchmarks/ (not a package) as a module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- statistics


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its two-sided 95% interval, t-distribution with n - 1 degrees of freedom:
    t_{0.975, n-1} * s / sqrt(n) with s the sample standard deviation. Needs n >= 2."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a 95% interval over seeds needs at least 2 values, got {x.size}")
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def verdict(method: tuple[float, float], baseline: tuple[float, float], higher_is_better: bool = True) -> str:
    """(mean, ci95) of the method and of the baseline -> one of VERDICTS: intervals that separate in the
    paper's direction reproduce the claim, the other way they contradict it, overlapping ones say nothing."""
    (m, dm), (b, db) = method, baseline
    if not all(math.isfinite(v) for v in (m, dm, b, db)):
        return "inconclusive"
    if m - dm > b + db:
        return "reproduces" if higher_is_better else "does not reproduce"
    if m + dm < b - db:
        return "does not reproduce" if higher_is_better else "reproduces"
    return "inconclusive"


# -------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Claim:
    method: str
    baseline: str
    metric: str
    higher_is_better: bool = True


@dataclass
class Context:
    work: Path
    quick: bool
    steps: int | None  # the reduced budget (--steps), None for the section's default
    memo: dict[Any, Any] = field(default_factory=dict)

    def once(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass(frozen=True)
class MnistBudget:
    steps: int  # optimizer steps of every compared student
    teacher_steps: int  # the MAE teacher (dmae, g2sd, hybrid) and the supervised teacher (hybrid)
    batch_size: int = 64
    student: str = "ViT 96-d x 4 blocks, 3 heads, 32 px, patch 4"
    eval_limit: int | None = None  # images per eval split (None: all 4,000 / 1,000)


MNIST_FULL = MnistBudget(steps=500, teacher_steps=500)
MNIST_QUICK = MnistBudget(steps=3, teacher_steps=3, batch_size=32, eval_limit=200)
STUDENT = ["model.embed_dim=96", "model.depth=4", "model.num_heads=3"]


def mnist_budget(ctx: Context) -> MnistBudget:
    budget = MNIST_QUICK if ctx.quick else MNIST_FULL
    return replace(budget, steps=ctx.steps, teacher_steps=ctx.steps) if ctx.steps else budget


def _mnist_train(
    ctx: Context, seed: int, name: str, config: str, *overrides: str, teacher: bool = False
) -> tuple[Path, float]:
    """One training run per (seed, name), shared by the sections that compare against it."""
    budget = mnist_budget(ctx)
    steps = budget.teacher_steps if teacher else budget.steps

    def make() -> tuple[Path, float]:
        bench = _sibling("mae_distillers").Bench(ctx.work / "mnist" / f"seed{seed}", 0, False, seed)
        run = bench.train(f"{name}_{steps}", config, *overrides, f"data.batch_size={budget.batch_size}", steps=steps)
        return run, json.loads((run / "run_stats.json").read_text())["train_seconds"]  # kept by a reused run

    return ctx.once(("mnist", seed, name, steps), make)


def _mnist_scores(ctx: Context, backbone: str | Path, *overrides: str) -> dict[str, float]:
    limit = mnist_budget(ctx).eval_limit
    settings = [*overrides, "run.cache=false", *([f"data.limit={limit}"] if limit else [])]

    def make() -> dict[str, float]:
        print(f"== evaluate {backbone} {' '.join(overrides)}", flush=True)
        scores = evaluate(backbone, protocols=("knn", "linear"), overrides=settings)
        return {"knn_top1": scores["knn_top1"], "linear_top1": scores["linear_top1"], "n_val": scores["knn_n"]}

    return ctx.once(("mnist-eval", str(backbone), overrides, limit), make)


def _mnist_rows(ctx: Context, seed: int, runs: dict[str, tuple[Path, float]]) -> dict[str, dict]:
    """Scores of trained runs plus the random init of the student's shape (same seed)."""
    rows = {}
    for row, (run, seconds) in runs.items():
        rows[row] = {**_mnist_scores(ctx, run / "backbone.safetensors"), "train_s": seconds}
    like = next(iter(runs.values()))[0] / "backbone.safetensors"
    rows[RANDOM] = {**_mnist_scores(ctx, like, "model.weights=none", f"model.seed={seed}"), "train_s": 0.0}
    return rows


def _teacher(ctx: Context, seed: int) -> Path:
    return _mnist_train(ctx, seed, "mae_teacher", "mae/tiny_mnist.yaml", teacher=True)[0]


def _mae_student(ctx: Context, seed: int) -> tuple[Path, float]:
    # mae_distillers' MAE student: G2SD's student shape, decoder and warmup with MAE's objective
    return _mnist_train(ctx, seed, "mae_student", "mae/tiny_mnist.yaml", *STUDENT, "objective.decoder.dim=64",
                        "objective.decoder.heads=4", "optim.warmup_fraction=0.05")


def _dmae(ctx: Context, seed: int) -> tuple[Path, float]:
    return _mnist_train(ctx, seed, "dmae", "dmae/tiny_mnist.yaml", f"objective.teacher.source={_teacher(ctx, seed)}")


def mae_section(ctx: Context, seed: int) -> dict[str, dict]:
    return _mnist_rows(ctx, seed, {"MAE": _mae_student(ctx, seed)})


def dmae_section(ctx: Context, seed: int) -> dict[str, dict]:
    return _mnist_rows(ctx, seed, {"DMAE": _dmae(ctx, seed), "MAE student": _mae_student(ctx, seed)})


def g2sd_section(ctx: Context, seed: int) -> dict[str, dict]:
    g2sd = _mnist_train(ctx, seed, "g2sd_generic", "g2sd/tiny_mnist_generic.yaml",
                        f"objective.teacher.source={_teacher(ctx, seed)}")
    return _mnist_rows(ctx, seed, {"G2SD (generic)": g2sd, "MAE student": _mae_student(ctx, seed)})


def hybrid_section(ctx: Context, seed: int) -> dict[str, dict]:
    supervised = _mnist_train(ctx, seed, "supervised_teacher", "finetune/tiny_mnist_scratch.yaml", teacher=True)[0]
    hybrid = _mnist_train(ctx, seed, "hybrid", "hybrid/tiny_mnist.yaml",
                          f"objective.contrastive_teacher.source={supervised}",
                          f"objective.mim_teacher.source={_teacher(ctx, seed)}")
    return _mnist_rows(ctx, seed, {"Hybrid": hybrid, "DMAE": _dmae(ctx, seed)})


def dino_section(ctx: Context, seed: int) -> dict[str, dict]:
    return _mnist_rows(ctx, seed, {"DINO": _mnist_train(ctx, seed, "dino", "dino/tiny_mnist.yaml")})


def mnist_pixels(ctx: Context) -> dict[str, dict]:
    return {PIXELS: _mnist_scores(ctx, "pixels")}


def _setting(module: str, ctx: Context, seed: int, **steps: Callable[[int], int]) -> Any:
    """A sibling benchmark's QUICK or DEFAULT setting at `seed`; each `steps` field scaled from --steps."""
    bench = _sibling(module)
    s = replace(bench.QUICK if ctx.quick else bench.DEFAULT, seed=seed)
    return replace(s, **{key: scale(ctx.steps) for key, scale in steps.items()}) if ctx.steps else s


def _pixel_rows(specs: Sequence[tuple[str, str, list[str], dict[str, str]]]) -> dict[str, dict]:
    """(protocol, data, settings, {metric: result metric}) run on the raw pixels: one deterministic row."""
    row = {}
    for protocol, data, settings, metrics in specs:
        print(f"== evaluate pixels: {protocol} on {data}", flush=True)
        result, _ = run_protocol(protocol, PIXELS, data, ["run.progress=false", "run.cache=false", *settings],
                                 write=False)
        row.update({metric: result.metrics[key] for metric, key in metrics.items()})
    return {PIXELS: row}


def cmd_section(ctx: Context, seed: int) -> dict[str, dict]:
    s = _setting("patch_distill_benchmark", ctx, seed, steps=lambda n: n)
    record = _sibling("patch_distill_benchmark").cmd_part(s, ctx.work / "cmd" / f"seed{seed}")
    keys = ("knn_top1", "linear_top1", "rank1", "rank5", "map100", "train_cpu_s")
    return {f"{row['model']} ({row['pooling']})": {k: row[k] for k in keys} for row in record["rows"]}


def cmd_pixels(ctx: Context) -> dict[str, dict]:
    s = _setting("patch_distill_benchmark", ctx, 0)
    limit = [f"data.limit={s.limit}"] if s.limit else []
    return _pixel_rows([
        ("knn", "shapes_fine", [*limit, "knn.query_split=test"], {"knn_top1": "top1"}),
        ("linear", "shapes_fine", [*limit, "linear.eval_split=test"], {"linear_top1": "top1"}),
        ("retrieve", "shapes_fine", [*limit, "retrieve.protocol=cmd", "retrieve.query_split=test", "retrieve.ks=[1,5]"],
         {"rank1": "recall@1", "rank5": "recall@5", "map100": "map@100"}),
    ])


def cotap_section(ctx: Context, seed: int) -> dict[str, dict]:
    s = _setting("patch_distill_benchmark", ctx, seed, steps=lambda n: n, continue_steps=lambda n: max(1, n // 3))
    record = _sibling("patch_distill_benchmark").cotap_part(s, ctx.work / "cotap" / f"seed{seed}")
    names = [RANDOM, "DINO start", "DINO continued", "CoTAP"]  # cotap_part's row order
    keys = ("segment_miou", "pixel_acc", "knn_top1", "train_cpu_s")
    return {name: {k: row[k] for k in keys} for name, row in zip(names, record["rows"], strict=True)}


def cotap_pixels(ctx: Context) -> dict[str, dict]:
    s = _setting("patch_distill_benchmark", ctx, 0)
    limit = [f"data.limit={s.limit}"] if s.limit else []
    return _pixel_rows([
        ("segment", "shapes_scenes", [*limit, "segment.eval_split=test", f"segment.epochs={s.segment_epochs}"],
         {"segment_miou": "miou", "pixel_acc": "pixel_accuracy"}),
        ("knn", "shapes_scenes", [*limit, "knn.query_split=test"], {"knn_top1": "top1"}),
    ])


def mrdd_section(ctx: Context, seed: int) -> dict[str, dict]:
    s = _setting("mrdd_benchmark", ctx, seed, steps1=lambda n: n, steps2=lambda n: max(1, 2 * n // 3))
    mrdd, out = _sibling("mrdd_benchmark"), ctx.work / "mrdd" / f"seed{seed}"
    record = mrdd.run(s, out, "claims.py")
    stage2 = out / "runs" / "stage2" / "backbone.safetensors"
    random = {"representation": f"{RANDOM} (combined)", **mrdd._scores(
        stage2, "combined", s, out / "eval" / "random_init", "model.weights=none", f"model.seed={seed}")}
    # the pixel row is seeded too here (k-means restarts), so it stays a per-seed row
    keys = ("acc", "nmi", "ari", "linear_top1", "n_val")
    return {row["representation"]: {k: row[k] for k in keys} for row in (*record["rows"], random)}


def tips_section(ctx: Context, seed: int) -> dict[str, dict]:
    s = _setting("tips_benchmark", ctx, seed, steps=lambda n: n)
    torch.manual_seed(seed)
    record = _sibling("tips_benchmark").run(s, ctx.work / "tips" / f"seed{seed}", "claims.py")
    keys = ("zero_shot_top1", "noisy_i2t_r1", "noisy_t2i_r1", "synthetic_i2t_r1", "synthetic_t2i_r1", "seg_miou")
    return {row["model"]: {k: row[k] for k in keys if k in row} for row in record["rows"]}


def tips_pixels(ctx: Context) -> dict[str, dict]:
    s = _setting("tips_benchmark", ctx, 0)
    return _pixel_rows([("segment", "shapes_text", [f"data.limit={s.seg_limit}"], {"seg_miou": "miou"})])


ECHO_VIDEOS = 1024  # full mode: 128 test / 128 val / 768 train (the generator keeps 1/8 for test and for val)


def _echo_setting(ctx: Context, seed: int) -> Any:
    s = _setting("echo_benchmark", ctx, seed, steps=lambda n: n)
    return s if ctx.quick else replace(s, videos=ECHO_VIDEOS)


def echo_section(ctx: Context, seed: int) -> dict[str, dict]:
    echo = _sibling("echo_benchmark")
    record = echo.run(_echo_setting(ctx, seed), ctx.work / "echo" / f"seed{seed}", "claims.py")
    return {row["model"]: {k: row[k] for k in (*echo.METRICS, "train_s")} for row in record["rows"]}


@dataclass(frozen=True)
class Section:
    title: str
    run: Callable[[Context, int], dict[str, dict]]  # (ctx, seed) -> row -> metric -> value
    budget: Callable[[Context], Any]
    claims: tuple[Claim, ...]
    fixed: Callable[[Context], dict[str, dict]] | None = None  # deterministic rows, evaluated once


def _both(method: str, baseline: str, metrics: Sequence[str]) -> tuple[Claim, ...]:
    return tuple(Claim(method, baseline, metric) for metric in metrics)


TOP1 = ("knn_top1", "linear_top1")
SECTIONS: dict[str, Section] = {
    "mae": Section("MAE vs random init (MNIST)", mae_section, mnist_budget, _both("MAE", RANDOM, TOP1), mnist_pixels),
    "dmae": Section("DMAE vs MAE student at equal steps (MNIST)", dmae_section, mnist_budget,
                    _both("DMAE", "MAE student", TOP1), mnist_pixels),
    "g2sd": Section("G2SD vs MAE student (MNIST, frozen generic stage)", g2sd_section, mnist_budget,
                    _both("G2SD (generic)", "MAE student", TOP1), mnist_pixels),
    "hybrid": Section("Hybrid Distillation vs DMAE (MNIST)", hybrid_section, mnist_budget,
                      _both("Hybrid", "DMAE", TOP1), mnist_pixels),
    "dino": Section("DINO vs random init (MNIST)", dino_section, mnist_budget, _both("DINO", RANDOM, TOP1),
                    mnist_pixels),
    "cmd": Section("CMD vs DINO (shapes_fine retrieval)", cmd_section,
                   lambda ctx: _setting("patch_distill_benchmark", ctx, 0, steps=lambda n: n),
                   (*_both("CMD (mean)", "DINO (cls)", ("rank1", "map100")),
                    *_both("CMD (mean)", "DINO (mean)", ("rank1", "map100"))), cmd_pixels),
    "cotap": Section("CoTAP vs its DINO start (shapes_scenes segmentation)", cotap_section,
                     lambda ctx: _setting("patch_distill_benchmark", ctx, 0, steps=lambda n: n,
                                          continue_steps=lambda n: max(1, n // 3)),
                     (Claim("CoTAP", "DINO start", "segment_miou"), Claim("CoTAP", "DINO continued", "segment_miou")),
                     cotap_pixels),
    "mrdd": Section("MRDD combined vs consistent / specific (EdgeMNIST clustering)", mrdd_section,
                    lambda ctx: _setting("mrdd_benchmark", ctx, 0, steps1=lambda n: n, steps2=lambda n: max(1, 2 * n // 3)),
                    (*_both("MRDD combined", "MRDD consistent", ("acc", "nmi")),
                     *_both("MRDD combined", "MRDD specific", ("acc", "nmi")))),
    "tips": Section("TIPS vs CLIP-only (shapes_text)", tips_section,
                    lambda ctx: _setting("tips_benchmark", ctx, 0, steps=lambda n: n),
                    (Claim("TIPS", "CLIP-only", "seg_miou"),), tips_pixels),
    "echo": Section("DISCOVR vs VideoMAE and image DINO (generated echo videos)", echo_section,
                    lambda ctx: _echo_setting(ctx, 0),
                    tuple(Claim("DISCOVR", baseline, metric) for baseline in ("VideoMAE", "DINO (frames)")
                          for metric in ("zero_shot_balanced_accuracy", "ef_r2", "lv_dice"))),
}


# --------------------------------------------------------------------------------------------------- running


def summarize(per_seed: list[dict[str, dict]], fixed: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """row -> metric -> {mean, ci95, n, values}; fixed (deterministic) rows get ci95 0 and n 1. A row's
    `n_val` (the evaluation samples, the same for every seed) is kept beside its metrics, not averaged."""
    rows: dict[str, dict[str, dict]] = {}
    for name in per_seed[0]:
        rows[name] = {}
        for metric in per_seed[0][name]:
            values = [seed_rows[name][metric] for seed_rows in per_seed]
            if any(v is None for v in values):
                continue
            if metric == "n_val":
                rows[name][metric] = {"samples": sorted(set(values))}
                continue
            mean, ci = mean_ci95(values)
            rows[name][metric] = {"mean": mean, "ci95": ci, "n": len(values), "values": values}
    for name, scores in fixed.items():
        rows[name] = {
            m: {"samples": [v]} if m == "n_val" else {"mean": v, "ci95": 0.0, "n": 1, "values": [v], "deterministic": True}
            for m, v in scores.items()
        }
    return rows


def name_is_random(row: str) -> bool:
    return row.lower().startswith("random")


def beats_random(rows: dict[str, dict[str, dict]], row: str, metric: str, higher_is_better: bool = True) -> bool | None:
    """Whether `row`'s interval on `metric` separates, in the better direction, from every random-init row's
    (rows named `random...`); None without one. A claim whose two rows both fail this compares floors: the
    benchmark cannot tell trained from untrained at this budget, whatever the verdict."""
    randoms = [scores[metric] for name, scores in rows.items() if name_is_random(name) and metric in scores]
    if not randoms or name_is_random(row):
        return None
    score = rows[row][metric]
    return all(verdict((score["mean"], score["ci95"]), (r["mean"], r["ci95"]), higher_is_better) == "reproduces"
               for r in randoms)


def judge(claims: Sequence[Claim], rows: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    judged = []
    for c in claims:
        m, b = rows[c.method][c.metric], rows[c.baseline][c.metric]
        judged.append({
            **asdict(c), "method_mean": m["mean"], "method_ci95": m["ci95"], "baseline_mean": b["mean"],
            "baseline_ci95": b["ci95"], "n": min(m["n"], b["n"]),
            "verdict": verdict((m["mean"], m["ci95"]), (b["mean"], b["ci95"]), c.higher_is_better),
            "method_beats_random": beats_random(rows, c.method, c.metric, c.higher_is_better),
            "baseline_beats_random": beats_random(rows, c.baseline, c.metric, c.higher_is_better),
        })
    return judged


def below_pixels(rows: dict[str, dict[str, dict]]) -> dict[str, list[str]]:
    """metric -> the rows whose whole interval lies below the raw pixels' (the row named `pixels...`)."""
    pixels = next((name for name in rows if name.startswith(PIXELS)), None)
    if pixels is None:
        return {}
    return {
        metric: [name for name, scores in rows.items() if name != pixels and metric in scores
                 and scores[metric]["mean"] + scores[metric]["ci95"] < pixel["mean"] - pixel["ci95"]]
        for metric, pixel in rows[pixels].items() if "mean" in pixel and not metric.endswith("_s")
    }


def run_section(name: str, ctx: Context, seeds: Sequence[int], provenance: dict[str, Any]) -> dict[str, Any]:
    """One section's record, stamped with `provenance` (command, mode, threads) and its own time and load, so
    that it stays self-describing once combined with sections measured by other runs (`combine`)."""
    section = SECTIONS[name]
    created, load_start = _now(), _load()
    tic, cpu = time.perf_counter(), time.process_time()
    per_seed = []
    for seed in seeds:
        print(f"==== section {name}, seed {seed}", flush=True)
        per_seed.append(section.run(ctx, seed))
    fixed = section.fixed(ctx) if section.fixed else {}
    rows = summarize(per_seed, fixed)
    budget = section.budget(ctx)
    return {
        "title": section.title, "budget": {**asdict(budget), "seed": None, "seeds": list(seeds)},
        "rows": rows, "claims": judge(section.claims, rows), "below_pixels": below_pixels(rows),
        "wall_s": round(time.perf_counter() - tic), "cpu_s": round(time.process_time() - cpu),
        **provenance, "created": created, "load_average": {"start": load_start, "end": _load()},
    }


PROVENANCE = ("command", "mode", "threads", "created")


def combine(records: Sequence[dict[str, Any]], command: str) -> dict[str, Any]:
    """Several claims.json records -> one, each section keeping the provenance of the run that measured it
    (records written before sections were stamped carry it at the top level). A section held by several
    records is taken from the last one; sections are ordered as in SECTIONS."""
    sections: dict[str, dict[str, Any]] = {}
    for record in records:
        for name, section in record["sections"].items():
            inherited = {key: record[key] for key in PROVENANCE if key in record and key not in section}
            if "load_average" not in section and "machine" in record:
                machine = record["machine"]
                inherited["load_average"] = {"start": machine.get("load_average_start"), "end": machine.get("load_average_end")}
            sections[name] = {**section, **inherited}
            if name in SECTIONS:  # verdicts from the rows with the current rule (older records lack some fields)
                sections[name]["claims"] = judge(SECTIONS[name].claims, section["rows"])
    order = [name for name in SECTIONS if name in sections]
    return {
        "benchmark": "claims", "command": command, "created": _now(), "machine": machine_info(),
        "combined_from": [{"command": r.get("command"), "sections": list(r["sections"]),
                           **({"note": r["note"]} if r.get("note") else {})} for r in records],
        "sections_run": order, "sections_not_run": [name for name in SECTIONS if name not in sections],
        "sections": {name: sections[name] for name in order},
    }


def cell(score: dict[str, Any] | None) -> str:
    if score is None:
        return ""
    if "samples" in score:
        return "/".join(str(n) for n in score["samples"])
    return f"{score['mean']:.3f} ± {score['ci95']:.3f}" if score["n"] > 1 else f"{score['mean']:.3f} (fixed)"


def _yes(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def tables(name: str, result: dict[str, Any]) -> str:
    rows = result["rows"]
    metrics = list(dict.fromkeys(m for scores in rows.values() for m in scores))
    score_rows = [{"row": row, **{m: cell(scores.get(m)) for m in metrics},
                   "n": max(s.get("n", 0) for s in scores.values())} for row, scores in rows.items()]
    claim_rows = [{
        "claim": f"{c['method']} > {c['baseline']}" if c["higher_is_better"] else f"{c['method']} < {c['baseline']}",
        "metric": c["metric"], "method": f"{c['method_mean']:.3f} ± {c['method_ci95']:.3f}",
        "baseline": f"{c['baseline_mean']:.3f} ± {c['baseline_ci95']:.3f}", "n": c["n"], "verdict": c["verdict"],
        "beat random init (method / baseline)": f"{_yes(c['method_beats_random'])} / {_yes(c['baseline_beats_random'])}",
    } for c in result["claims"]]
    budget = ", ".join(f"{k}={v}" for k, v in result["budget"].items() if v is not None)
    below = "; ".join(f"{m}: {', '.join(r)}" for m, r in result["below_pixels"].items() if r)
    return "\n".join([
        f"\n## {name}: {result['title']}", f"budget: {budget}", "", format_table(score_rows), "",
        format_table(claim_rows), *([f"below raw pixels: {below}"] if below else []),
    ])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average_start": _load(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 3; at least 3 outside --quick)")
    parser.add_argument("--steps", type=int, help="a reduced budget: the main steps of every section")
    parser.add_argument("--quick", action="store_true", help="a few steps, small eval slices: a smoke check")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/claims"), help="where claims.json goes")
    parser.add_argument("--work", type=Path, help="training runs (default <out>/work)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: combine these claims.json files (sections run separately, e.g. in "
                             "parallel or at different budgets) into <out>/claims.json")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/claims.py", *argv])
    if args.combine:
        missing = [str(p) for p in args.combine if not p.is_file()]
        if missing:
            parser.error(f"--combine: no such file: {', '.join(missing)}")
        record = combine([json.loads(p.read_text()) for p in args.combine], command)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "claims.json").write_text(json.dumps(record, indent=2))
        print(f"combined sections {', '.join(record['sections_run'])} into {args.out / 'claims.json'}")
        return 0
    seeds = args.seeds or (2 if args.quick else 3)
    if seeds < (2 if args.quick else 3):
        parser.error(f"--seeds {seeds}: at least {2 if args.quick else 3} seeds{'' if args.quick else ' (2 only with --quick)'}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps {args.steps}: must be >= 1")
    ctx = Context(work=args.work or args.out / "work", quick=args.quick, steps=args.steps)
    mode = "quick" if args.quick else "reduced" if args.steps else "full"
    record: dict[str, Any] = {
        "benchmark": "claims", "command": command, "created": _now(), "machine": machine_info(),
        "threads": args.threads, "seeds": list(range(seeds)), "mode": mode,
        "sections_requested": list(args.sections), "sections_run": [],  # run: the sections finished so far
        "sections_not_requested": [s for s in SECTIONS if s not in args.sections], "sections": {},
    }
    tic = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "claims.json"
    with cpu_threads(args.threads):
        for name in args.sections:
            provenance = {"command": command, "mode": mode, "threads": args.threads}
            record["sections"][name] = run_section(name, ctx, range(seeds), provenance)
            record["sections_run"].append(name)
            record["machine"]["load_average_end"] = _load()
            record["wall_s"] = round(time.perf_counter() - tic)
            path.write_text(json.dumps(record, indent=2))  # after every section: a stopped run keeps its sections
    for name, result in record["sections"].items():
        print(tables(name, result))
    counts = {v: sum(c["verdict"] == v for r in record["sections"].values() for c in r["claims"]) for v in VERDICTS}
    print(f"\nverdicts: {counts}; {record['wall_s']} s; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
