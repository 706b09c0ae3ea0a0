"""GPU throughput (issue 14, item 6): images/s of DINO and DMAE with a ViT-S/16 student at 224 px in bf16,
beside plain timm forward + backward of the same ViT-S/16 on the same card, batch and precision; peak memory.

    python benchmarks/gpu_throughput.py [--batch 64] [--steps 20] [--out DIR]   # on a CUDA machine
    python benchmarks/gpu_throughput.py --quick --device cpu                       # smoke check (a test runs it)

Rows, each timed over `--steps` steps after `--warmup` (CUDA synchronised around the timed window, so the
figure is the card's, not the launch queue's), at the recipe's precision (bf16 autocast, fused AdamW):

- `timm ViT-S/16 (224 px)`: `timm.create_model('vit_small_patch16_224')` forward + backward on B images at
  224 px through a stand-in loss, and its AdamW step: the plain-PyTorch cost of one image at the same size.
- `timm ViT-S/16 (DINO's crops)`: the same on the crops one DINO step feeds its student (2 x 224 + 10 x 96 px
  per image): the student's share of DINO's step.
- `DINO`: `Trainer.train_step` of configs/dino/tiny_mnist.yaml at the official ViT-S/16 recipe (2 global
  224-px and 10 local 96-px crops, head 65,536 x 2,048 x 256 without BatchNorm), EMA teacher included.
- `DMAE`: `Trainer.train_step` of configs/dmae/tiny_mnist.yaml with a ViT-S/16 student and an MAE ViT-B/16
  teacher (weights from a one-step MAE run made here: speed does not depend on them), 75% masking.

Images/s counts source images (B per step), so DINO's 12 crops per image and DMAE's masking show in the
ratio to the timm row. Data: the bundled MNIST digits resized by each recipe's transform; one batch is drawn
once and reused (the loader is measured by loader_benchmark.py); the trainers are built as in
objective_overhead.py (one CPU thread for the host side, which does not bound a CUDA step). `--quick` shrinks everything (64 px,
patch 16, tiny head, 2 local crops, batch 4) to check the script, not the hardware.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import timm
import torch
from objective_overhead import build_trainer, objective_step  # a sibling script: benchmarks/ is on sys.path

from ssl_distill.config import load_config
from ssl_distill.engine.trainer import adamw, train
from ssl_distill.runtime import resolve_device

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUIET = ["train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0", "train.resume=false"]


@dataclass(frozen=True)
class Scale:
    img: int  # global crop / MAE input size
    local: int  # local crop size
    n_local: int
    student: tuple[int, int, int]  # ViT-S/16: width, depth, heads
    teacher: tuple[int, int, int]  # DMAE's MAE ViT-B/16 teacher
    teacher_decoder: tuple[int, int, int]
    student_decoder: tuple[int, int, int]
    dino_head: tuple[str, ...]


FULL = Scale(224, 96, 10, (384, 12, 6), (768, 12, 12), (512, 8, 16), (256, 4, 8),
             ("objective.output_dim=65536", "objective.hidden_dim=2048", "objective.bottleneck_dim=256",
              "objective.batch_norm=false"))
QUICK = Scale(64, 32, 2, (64, 2, 2), (96, 4, 3), (64, 1, 2), (64, 1, 2), ("objective.output_dim=256",))


def vit(name: str, dims: tuple[int, int, int], img: int) -> list[str]:
    width, depth, heads = dims
    return [f"model.name={name}", f"model.img_size={img}", "model.patch_size=16", f"model.embed_dim={width}",
            f"model.depth={depth}", f"model.num_heads={heads}"]


def decoder(dims: tuple[int, int, int]) -> list[str]:
    return [f"objective.decoder.dim={dims[0]}", f"objective.decoder.depth={dims[1]}", f"objective.decoder.heads={dims[2]}"]


def timed(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> dict[str, float | None]:
    """Milliseconds per step (the mean over one synchronised window of `steps`) and peak device memory."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_ms": 1000 * seconds, "peak_gib": peak}


def trainer_row(name: str, config: str, overrides: list[str], batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """`Trainer.train_step` of `config` + `overrides` on one batch drawn once, at mid-schedule, built and stepped
    as objective_overhead.py does (logs stay unread between steps: no host sync, as in training)."""
    trainer, data = build_trainer(config, args.work, [
        f"run.name={name}", f"train.device={args.device}", f"train.precision={args.precision}",
        f"data.batch_size={batch}", f"data.limit={batch}", *overrides,
    ])
    return {"row": name, **timed(lambda: objective_step(trainer, data), trainer.device, args.steps, args.warmup)}


def timm_row(name: str, crops: list[tuple[int, int]], args: argparse.Namespace, device: torch.device) -> dict:
    """Plain timm ViT-S/16 forward + backward (+ fused AdamW) on `crops` = [(count, size), ...]."""
    torch.manual_seed(0)
    s = QUICK if args.quick else FULL
    width, depth, heads = s.student
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=s.img,
                              dynamic_img_size=True, embed_dim=width, depth=depth, num_heads=heads).to(device)
    optimizer = adamw([{"params": list(model.parameters())}], 1e-4, (0.9, 0.999), device)
    images = [torch.randn(count, 3, size, size, device=device) for count, size in crops]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "fp32"):
            loss = sum(model(x).float().square().mean() for x in images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"row": name, **timed(step, device, args.steps, args.warmup)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="source images per step (default 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes, batch 4, 2 steps: a smoke check")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/gpu"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 4, 2, 1
    device = resolve_device(args.device)
    s = QUICK if args.quick else FULL
    b = args.batch
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        teacher = train(load_config(CONFIGS / "mae/tiny_mnist.yaml", [
            *QUIET, f"run.out_dir={work}", "run.name=mae_teacher", "train.max_steps=1", f"train.device={args.device}",
            f"data.transform.img_size={s.img}", "data.batch_size=2", "data.limit=2",
            *vit("vit_base_patch16_224", s.teacher, s.img), *decoder(s.teacher_decoder)])).exported
        rows = [
            timm_row(f"timm ViT-S/16 ({s.img} px)", [(b, s.img)], args, device),
            timm_row("timm ViT-S/16 (DINO's crops)", [(2 * b, s.img), (s.n_local * b, s.local)], args, device),
        ]
        dino = trainer_row("DINO", "dino/tiny_mnist.yaml", [
            *vit("vit_small_patch16_224", s.student, s.img), f"data.transform.global_crop_size={s.img}",
            f"data.transform.local_crop_size={s.local}", f"data.transform.n_local_views={s.n_local}", *s.dino_head,
        ], b, args)
        dmae = trainer_row("DMAE", "dmae/tiny_mnist.yaml", [
            *vit("vit_small_patch16_224", s.student, s.img), "data.transform.name=mae",
            f"data.transform.img_size={s.img}", f"objective.teacher.source={teacher}", *decoder(s.student_decoder),
        ], b, args)
        rows += [dino, dmae]
    base = rows[0]["step_ms"]
    for row in rows:
        row["images_per_s"] = b / (row["step_ms"] / 1000)
        row["time_vs_timm_224"] = row["step_ms"] / base
    record = {
        "benchmark": "gpu_throughput",
        "command": shlex.join(["python", "benchmarks/gpu_throughput.py", *argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "setting": {"batch": b, "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
                    "img": s.img, "local": s.local, "n_local": s.n_local, "quick": args.quick},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_throughput.json").write_text(json.dumps(record, indent=2))
    for row in rows:
        peak = f"{row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else "-"
        print(f"{row['row']:<30} {row['step_ms']:9.1f} ms  {row['images_per_s']:9.1f} img/s  "
              f"x{row['time_vs_timm_224']:.2f} of timm  peak {peak}")
    return record


if __name__ == "__main__":
    main()
