"""TIPS benchmark (issue 13): TIPS against CLIP-only training on the shapes image-text set.

    python benchmarks/tips_benchmark.py [--steps N] [--seed S] [--quick] [--out DIR]

Rows, same image tower (ViT 32 px, patch 4, width 64, depth 4), text tower and optimizer steps:
  TIPS        configs/tips/tiny_shapes.yaml: two class tokens, CLS-1 <-> noisy caption, CLS-2 <->
              synthetic caption, DINO from 4 local crops, iBOT on block-masked patches
  CLIP-only   the same config with one class token and the noisy caption only, no self-distillation
              (objective.num_cls_tokens=1, distill_weight=0, mask_weight=0, no local crops)
  random init the image tower untrained (the floor of segmentation transfer)
Columns, on the 1,000 val scenes (trained on the 4,000 train scenes):
  zero-shot top-1     prompt ensembles over the 5 class names, CLS-1 (chance 0.2)
  I->T / T->I R@1     retrieval of the noisy captions with CLS-1, and of the synthetic captions with
                      CLS-2 (TIPS) or CLS-1 (CLIP-only, which never saw them)
  seg mIoU            linear segmentation head on frozen patch tokens, 2,000 train -> 1,000 val scenes
The paper's claim: dense (segmentation) quality improves, at no cost to the image-text alignment.
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
import torch

from eval.api import run_protocol
from eval.results import format_table
from ssl_distill.backbones import build_backbone, load_backbone
from ssl_distill.config import load_config
from ssl_distill.data import seeded_call
from ssl_distill.engine import train
from ssl_distill.runtime import cpu_threads

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tips" / "tiny_shapes.yaml"
CLIP_ONLY = [
    "objective.num_cls_tokens=1", "objective.distill_weight=0", "objective.mask_weight=0",
    "data.options.captions=[noisy]", "data.transform.n_local_views=0",
]


@dataclass(frozen=True)
class Setting:
    steps: int = 300
    batch_size: int = 64
    limit: int | None = None
    seg_limit: int = 2000
    seed: int = 0


DEFAULT = Setting()
QUICK = Setting(steps=3, batch_size=16, limit=64, seg_limit=64)


def _train(out: Path, name: str, s: Setting, *overrides: str) -> tuple[Path, float, float]:
    cfg = load_config(CONFIG, [
        f"run.out_dir={out}", f"run.name={name}", f"run.seed={s.seed}", f"data.batch_size={s.batch_size}",
        f"train.max_steps={s.steps}", "train.progress=false", "train.tensorboard=false", "train.log_every=10",
        "train.resume=false", *([f"data.limit={s.limit}"] if s.limit else []), *overrides,
    ])
    start = time.perf_counter()
    result = train(cfg)
    return result.run_dir, time.perf_counter() - start, float(np.mean(result.losses[-10:]))


def _scores(run_dir: Path | None, backbone: Any, s: Setting, out: Path, dual: bool) -> dict[str, float]:
    limit = [f"data.limit={s.limit}"] if s.limit else []
    settings = ["run.progress=false", *limit]
    scores: dict[str, float] = {}
    if run_dir is not None:
        text = f"{run_dir / 'text.safetensors'}"
        zeroshot, _ = run_protocol("zeroshot", backbone, "shapes_text", [*settings, f"zeroshot.text={text}"], out)
        scores["zero_shot_top1"] = zeroshot.metrics["top1"]
        for stream, pooling in (("noisy", "cls"), ("synthetic", "cls2" if dual else "cls")):
            retrieval, _ = run_protocol("text_retrieve", backbone, "shapes_text", [
                *settings, f"text_retrieve.text={text}", f"text_retrieve.caption={stream}", f"text_retrieve.pooling={pooling}",
            ], out / stream)
            scores[f"{stream}_i2t_r1"] = retrieval.metrics["i2t_R@1"]
            scores[f"{stream}_t2i_r1"] = retrieval.metrics["t2i_R@1"]
    segment, _ = run_protocol("segment", backbone, "shapes_text", ["run.progress=false", f"data.limit={s.seg_limit}"], out)
    scores["seg_miou"] = segment.metrics["miou"]
    return scores


def run(s: Setting, out: Path, command: str) -> dict[str, Any]:
    start = time.perf_counter()
    rows = []
    for name, overrides, dual in (("TIPS", [], True), ("CLIP-only", CLIP_ONLY, False)):
        run_dir, seconds, loss = _train(out / "runs", name, s, *overrides)
        scores = _scores(run_dir, str(run_dir / "backbone.safetensors"), s, out / "eval" / name, dual)
        rows.append({"model": name, "steps": s.steps, "train_s": round(seconds), "final_loss": loss, **scores})
    tips = load_backbone(out / "runs" / "TIPS" / "backbone.safetensors")
    spec = {k: v for k, v in tips.spec.items() if k != "kind"}
    random = seeded_call(s.seed, lambda: build_backbone({"kind": "vit", **spec}))
    rows.append({"model": "random init", "steps": 0, "train_s": 0, **_scores(None, random, s, out / "eval" / "random", True)})
    return {"setting": asdict(s), "command": command, "rows": rows, "seconds": time.perf_counter() - start}


def table(rows: list[dict[str, Any]]) -> str:
    columns = {
        "model": "model", "steps": "steps", "train_s": "train s", "zero_shot_top1": "zero-shot top-1",
        "noisy_i2t_r1": "noisy I->T R@1", "noisy_t2i_r1": "noisy T->I R@1", "synthetic_i2t_r1": "synth I->T R@1",
        "synthetic_t2i_r1": "synth T->I R@1", "seg_miou": "seg mIoU", "final_loss": "final loss",
    }
    return format_table([{columns[k]: row.get(k) for k in columns} for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help=f"optimizer steps per model (default {DEFAULT.steps})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps on a slice: a smoke check")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/tips"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    s = replace(QUICK if args.quick else DEFAULT, seed=args.seed)
    s = replace(s, steps=args.steps or s.steps)
    torch.manual_seed(s.seed)
    with cpu_threads(args.threads):
        record = run(s, args.out, shlex.join(["python", "benchmarks/tips_benchmark.py", *argv]))
    path = args.out / "tips_benchmark.json"
    path.write_text(json.dumps(record, indent=2))
    print(table(record["rows"]))
    print(f"val scenes: {1000 if s.limit is None else s.limit}; {record['seconds']:.0f} s; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
