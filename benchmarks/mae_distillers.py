"""MAE-teacher distillers on bundled MNIST (issue 11): G2SD against the same student trained as plain MAE,
and Hybrid Distillation against DMAE and against each of its teacher terms alone.

    python benchmarks/mae_distillers.py [--part g2sd|hybrid|all] [--epochs N] [--quick] [--out DIR]

One small MAE teacher (configs/mae/tiny_mnist.yaml: 128-d, 8 blocks, with its 96-d 2-block decoder) is
trained once into `<out>/runs/mae_teacher` and reused by every part (a finished run is never retrained;
delete the folder to start over). Every student has the same shape (96-d, 4 blocks, 3 heads) and the same
budget: `--epochs` epochs of 62 steps at batch 64 on the 4,000 training digits.

G2SD part:
  teacher FT   the MAE teacher fine-tuned on the labels (configs/finetune/tiny_mnist.yaml, 4 epochs);
  G2SD         generic stage (configs/g2sd/tiny_mnist_generic.yaml), then the specific stage
               (configs/g2sd/tiny_mnist_specific.yaml, 4 epochs) with teacher FT as its teacher;
  MAE student  configs/mae/tiny_mnist.yaml at the student's shape (decoder 64-d, 2 blocks), then plain
               fine-tuning with the same recipe and steps as the specific stage (no teacher).
Hybrid part:
  supervised   a supervised teacher from scratch (configs/finetune/tiny_mnist_scratch.yaml, 6 epochs);
  Hybrid       configs/hybrid/tiny_mnist.yaml (supervised features + MAE relations, masking ramp to 0.5);
  features     the same with relation_weight 0 (the supervised teacher's term alone);
  relations    the same with feature_weight 0 (the MAE teacher's term alone);
  DMAE         configs/dmae/tiny_mnist.yaml from the same MAE teacher.

Every encoder is evaluated frozen with the eval package's quick benchmark (`eval.api.evaluate`): weighted
kNN top-1 (k 20, T 0.07; MNIST train bank, val queries), linear-probe top-1 (MNIST train -> val) and
linear segmentation mIoU on shapes (2,000 train -> 1,000 val); a random init of the student's shape is the
floor. Fine-tuned runs report their validation top-1 on the 1,000 MNIST val digits (`val_top1`).

The script also measures what stopping G2SD's teacher inside its decoder saves: the teacher forward with
the decoder truncated against the full decoder (+ norm + pixel head), FLOPs (torch's FlopCounterMode) and
CPU time, for the tiny teacher and for an untrained ViT-B/16 MAE with its 512-d 8-block decoder at 224 px.

Runs use `--threads` CPU threads (default 1: on two shared cores one thread is fastest for tiny models).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightly.models import utils
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from eval.api import evaluate
from eval.results import format_table
from ssl_distill.backbones import ViT, build_backbone, load_backbone
from ssl_distill.config import load_config
from ssl_distill.data import seeded_call
from ssl_distill.engine import train
from ssl_distill.modules.decoder import DecoderConfig, PixelDecoder
from ssl_distill.modules.teacher import FrozenMAETeacher, TeacherConfig
from ssl_distill.runtime import cpu_threads

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDENT = ["model.embed_dim=96", "model.depth=4", "model.num_heads=3"]


class Bench:
    def __init__(self, out: Path, epochs: int, quick: bool, seed: int) -> None:
        self.out, self.epochs, self.quick, self.seed = out, epochs, quick, seed
        self.runs: dict[str, dict[str, Any]] = {}

    def train(self, name: str, config: str, *overrides: str, epochs: int | None = None, steps: int | None = None) -> Path:
        """Train `config` into <out>/runs/<name> (reused when finished); returns the run directory. The
        budget is `steps` optimizer steps when given, else `epochs` (default the bench's)."""
        budget = (
            [f"train.max_steps={steps}"] if steps else
            ["train.max_steps=6", "data.val_limit=64"] if self.quick else [f"train.epochs={epochs or self.epochs}"]
        )
        cfg = load_config(CONFIGS / config, [
            *overrides, *budget, f"run.name={name}", f"run.out_dir={self.out / 'runs'}", f"run.seed={self.seed}",
            "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0",
        ])
        run_dir = Path(cfg.run.out_dir) / name
        finished = (run_dir / "backbone.safetensors").is_file()
        print(f"== {'reuse' if finished else 'train'} {name} ({config})", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        result = train(cfg)
        self.runs[name] = {
            "config": config, "overrides": list(overrides), "steps": result.steps,
            "train_s": None if finished else round(time.perf_counter() - wall, 1),
            "train_cpu_s": None if finished else round(time.process_time() - cpu, 1),
            "final_loss": last_losses(run_dir),
        }
        return run_dir

    def evaluate(self, backbone: Path | torch.nn.Module) -> dict[str, float]:
        """kNN, linear and segmentation scores of a run's exported encoder (or a module)."""
        overrides = ["data.limit=256"] if self.quick else []
        source = backbone / "backbone.safetensors" if isinstance(backbone, Path) else backbone
        scores = evaluate(source, overrides=overrides)
        return {k: round(v, 4) for k, v in scores.items()}


def last_losses(run_dir: Path, count: int = 10) -> float | None:
    with open(run_dir / "metrics.csv") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle) if row.get("loss")]
    return round(sum(losses[-count:]) / len(losses[-count:]), 4) if losses else None


def val_top1(run_dir: Path) -> tuple[float, int]:
    with open(run_dir / "metrics.csv") as handle:
        last = [row for row in csv.DictReader(handle) if row.get("val_top1")][-1]
    return float(last["val_top1"]), int(last["val_n"])


def random_student(like: Path, seed: int) -> torch.nn.Module:
    return seeded_call(seed, lambda: build_backbone(load_backbone(like).spec))


def g2sd_part(b: Bench, teacher: Path) -> list[dict[str, Any]]:
    teacher_ft = b.train("teacher_finetuned", "finetune/tiny_mnist.yaml", f"objective.pretrained={teacher}", epochs=4)
    generic = b.train("g2sd_generic", "g2sd/tiny_mnist_generic.yaml", f"objective.teacher.source={teacher}")
    specific = b.train(
        "g2sd_specific", "g2sd/tiny_mnist_specific.yaml", f"objective.pretrained={generic}",
        f"objective.teacher.source={teacher_ft}", epochs=4,
    )
    mae = b.train(  # G2SD's optimizer schedule (warmup 5%) and decoder, MAE's objective
        "mae_student", "mae/tiny_mnist.yaml", *STUDENT, "objective.decoder.dim=64", "objective.decoder.heads=4",
        "optim.warmup_fraction=0.05",
    )
    mae_ft = b.train(  # the specific stage's recipe (class-token pool, no drop path) without its teacher
        "mae_student_finetuned", "finetune/tiny_mnist.yaml", *STUDENT, "model.drop_path_rate=0.0",
        "objective.pool=cls", f"objective.pretrained={mae}", epochs=4,
    )
    rows = []
    for name, encoder, finetuned in (
        ("MAE teacher (128-d x 8)", teacher, teacher_ft),
        ("G2SD student (96-d x 4)", generic, specific),
        ("MAE student (96-d x 4)", mae, mae_ft),
        ("random init (96-d x 4)", None, None),
    ):
        print(f"== evaluate {name}", flush=True)
        scores = b.evaluate(encoder if encoder is not None else random_student(generic, b.seed))
        row = {"model": name, **scores}
        if finetuned is not None:
            row["finetuned_top1"], row["finetuned_n"] = val_top1(finetuned)
        rows.append(row)
    teacher_row = rows[0]
    for row in rows[1:3]:
        row["linear_vs_teacher"] = round(row["linear_top1"] / teacher_row["linear_top1"], 4)
        row["finetuned_vs_teacher"] = round(row["finetuned_top1"] / teacher_row["finetuned_top1"], 4)
    return rows


def hybrid_part(b: Bench, teacher: Path) -> list[dict[str, Any]]:
    supervised = b.train("supervised_teacher", "finetune/tiny_mnist_scratch.yaml", epochs=6)
    sources = [f"objective.contrastive_teacher.source={supervised}", f"objective.mim_teacher.source={teacher}"]
    students = {
        "Hybrid (features + relations)": b.train("hybrid", "hybrid/tiny_mnist.yaml", *sources),
        "Hybrid features only (supervised teacher)": b.train(
            "hybrid_features", "hybrid/tiny_mnist.yaml", *sources, "objective.relation_weight=0"
        ),
        "Hybrid relations only (MAE teacher)": b.train(
            "hybrid_relations", "hybrid/tiny_mnist.yaml", *sources, "objective.feature_weight=0"
        ),
        "DMAE": b.train("dmae", "dmae/tiny_mnist.yaml", f"objective.teacher.source={teacher}"),
    }
    rows = []
    for name, encoder in (
        *students.items(),
        ("supervised teacher (128-d x 8)", supervised),
        ("MAE teacher (128-d x 8)", teacher),
        ("random init (96-d x 4)", None),
    ):
        print(f"== evaluate {name}", flush=True)
        scores = b.evaluate(encoder if encoder is not None else random_student(students["DMAE"], b.seed))
        row = {"model": name, **scores}
        if encoder == supervised:
            row["finetuned_top1"], row["finetuned_n"] = val_top1(supervised)
        rows.append(row)
    return rows


@torch.no_grad()
def full_teacher(backbone: torch.nn.Module, decoder: PixelDecoder, images: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
    """What the teacher would cost without stopping: encoder, every decoder block, norm and pixel head."""
    return decoder(backbone.encode(images, idx_keep).tokens, idx_keep)


def teacher_cost(b: Bench, teacher: Path) -> list[dict[str, Any]]:
    """FLOPs and CPU time of G2SD's teacher forward with the decoder truncated vs run in full."""
    tiny = FrozenMAETeacher.from_run(TeacherConfig(source=str(teacher)))
    torch.manual_seed(0)
    vitb = ViT("vit_base_patch16_224", img_size=224, patch_size=16)
    vitb_decoder = PixelDecoder.for_backbone(vitb, OmegaConf.structured(DecoderConfig(dim=512, depth=8, heads=16)))
    cases = [
        ("tiny 128-d x 8, decoder 96-d x 2, 32 px", tiny.backbone, tiny.decoder, tiny.decoder_blocks, 64, 32),
        ("ViT-B/16, decoder 512-d x 8, 224 px", vitb, vitb_decoder, 4, 2 if b.quick else 8, 224),
    ]
    rows = []
    for name, backbone, decoder, blocks, batch, size in cases:
        truncated = FrozenMAETeacher(backbone, decoder, blocks)
        images = torch.randn(batch, 3, size, size)
        idx_keep, _ = utils.random_token_mask((batch, backbone.num_patches + 1), 0.75)
        runs = {"full": partial(full_teacher, backbone, decoder, images, idx_keep), "truncated": partial(truncated, images, idx_keep)}
        row: dict[str, Any] = {"teacher": name, "decoder_blocks": f"{blocks} of {len(decoder.decoder.blocks)}", "batch": batch}
        for label, fn in runs.items():
            with FlopCounterMode(display=False) as counter:
                fn()
            row[f"{label}_gflops_per_image"] = round(counter.get_total_flops() / batch / 1e9, 3)
            fn()
            repeats = 2 if b.quick else 5
            start = time.process_time()
            for _ in range(repeats):
                fn()
            row[f"{label}_cpu_ms"] = round((time.process_time() - start) / repeats * 1000, 1)
        row["flops_saved"] = round(1 - row["truncated_gflops_per_image"] / row["full_gflops_per_image"], 3)
        row["time_saved"] = round(1 - row["truncated_cpu_ms"] / row["full_cpu_ms"], 3)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("g2sd", "hybrid", "all"), default="all")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the teacher and of every student (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="6 steps per run, small evaluations: a smoke check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/mae_distillers"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    b = Bench(args.out, args.epochs, args.quick, args.seed)
    record: dict[str, Any] = {"command": shlex.join(["python", "benchmarks/mae_distillers.py", *argv])}
    wall, cpu = time.perf_counter(), time.process_time()
    with cpu_threads(args.threads):
        teacher = b.train("mae_teacher", "mae/tiny_mnist.yaml")
        if args.part in ("g2sd", "all"):
            record["g2sd"] = g2sd_part(b, teacher)
            record["teacher_cost"] = teacher_cost(b, teacher)
        if args.part in ("hybrid", "all"):
            record["hybrid"] = hybrid_part(b, teacher)
    record.update(runs=b.runs, seconds=round(time.perf_counter() - wall), cpu_seconds=round(time.process_time() - cpu))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"mae_distillers_{args.part}.json"
    path.write_text(json.dumps(record, indent=2))
    for key in ("g2sd", "teacher_cost", "hybrid"):
        if key in record:
            print(f"\n{key}\n{format_table(record[key])}")
    print(f"\n{record['seconds']} s wall, {record['cpu_seconds']} s CPU; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
