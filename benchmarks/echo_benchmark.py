"""Echo benchmark (issue 4): DISCOVR against VideoMAE and image-only DINO on synthetic echo videos.

    python benchmarks/echo_benchmark.py [--steps N] [--videos N] [--seed S] [--quick] [--out DIR]

One synthetic echo set (`synth_echo_adult_<videos>_<seed>_v2`, TRAIN/VAL/TEST by the generator's
stratified split) and one budget for every method: the same optimizer steps, the same pixels per
step (B clips of T frames for the video methods, B x T frames for DINO) and encoders of the same
size (configs/base/tiny_echo.yaml). The methods train on the train videos only:
  DISCOVR   configs/discovr/tiny_echo.yaml with the official probability centring (with logit
            centring its DINO terms stay at ln(output_dim) here), video ViT (the student is evaluated);
  VideoMAE  configs/videomae/tiny_echo.yaml, video ViT;
  DINO      configs/dino/tiny_echo_frames.yaml, image ViT on `echo_frames` of the same train videos.
Random-init rows (one per architecture, same spec and seed) are the floor.

Every backbone is evaluated frozen through the eval package on the same items:
  zero-shot   DISCOVR's anomaly protocol: CLS, weighted kNN (k=10, T=0.07), memory bank = val
              videos, queries = test videos; balanced accuracy and macro F1 (Normal vs Abnormal);
  EF R^2      ridge regression of the ejection fraction on [CLS, mean patch token], train -> test;
  LV Dice     linear segmentation head on patch tokens of echo_frames, train -> test frames.
Video items are the mean of `eval_clips` evenly spaced clips (whole frame, no crop). The image ViT
sees a clip frame by frame, its tokens averaged over the frames (eval.features.FrameAverage); a
video ViT sees a frame as a static clip (eval.features.StaticClip).

Everything runs with `--threads` (default 1) CPU threads: on two shared cores a tiny model trains
tens of times faster on one thread than on two (ssl_distill/runtime.py).
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
from ssl_distill.config import load_config
from ssl_distill.data import seeded_call
from ssl_distill.data.video import synthetic_echo, video_entries
from ssl_distill.engine import train
from ssl_distill.runtime import cpu_threads

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = {  # row -> (config, its own settings); the DINO row trains on frames, the others on clips
    "DISCOVR": ("discovr/tiny_echo.yaml", []),
    "VideoMAE": ("videomae/tiny_echo.yaml", []),
    "DINO (frames)": ("dino/tiny_echo_frames.yaml", []),
}
RANDOM_ROWS = {"random video ViT": "DISCOVR", "random image ViT": "DINO (frames)"}  # row -> same spec as
METRICS = ("zero_shot_balanced_accuracy", "zero_shot_macro_f1", "ef_r2", "ef_mae", "lv_dice")
COLUMNS = {  # JSON key -> table header
    "model": "model",
    "arch": "arch",
    "steps": "steps",
    "train_s": "train s",
    "eval_s": "eval s",
    "zero_shot_balanced_accuracy": "zero-shot bal. acc",
    "zero_shot_macro_f1": "zero-shot macro-F1",
    "ef_r2": "EF R2",
    "ef_mae": "EF MAE",
    "lv_dice": "LV Dice",
}


@dataclass(frozen=True)
class Setting:
    videos: int
    steps: int
    clips: int  # clips per optimizer step (DINO: clips x frames frames)
    frames: int  # frames per clip
    train_frames: int  # frames per train video in DINO's frame set
    eval_clips: int  # evenly spaced clips per video, averaged, for zero-shot and EF
    eval_frames: int  # frames per video for segmentation
    segment_epochs: int
    seed: int = 0


DEFAULT = Setting(
    videos=256, steps=2000, clips=4, frames=8, train_frames=16, eval_clips=4, eval_frames=8, segment_epochs=30
)
QUICK = Setting(
    videos=16, steps=3, clips=2, frames=8, train_frames=2, eval_clips=1, eval_frames=2, segment_epochs=1
)


def slug(row: str) -> str:
    """'DINO (frames)' -> 'dino_frames': a row's folder name."""
    return re.sub(r"[^a-z0-9]+", "_", row.lower()).strip("_")


def train_overrides(method: str, s: Setting, out: Path) -> list[str]:
    """The shared budget and data as `key=value` settings for one method's config."""
    data = [f"data.options.synthetic_videos={s.videos}", f"data.options.synthetic_seed={s.seed}"]
    if method.startswith("DINO"):
        data += [f"data.batch_size={s.clips * s.frames}", f"data.options.frames_per_video={s.train_frames}"]
    else:
        data += [f"data.batch_size={s.clips}", f"data.options.num_frames={s.frames}"]
    run = [f"run.out_dir={out}", f"run.name={slug(method)}", f"run.seed={s.seed}"]
    loop = [
        f"train.max_steps={s.steps}",
        f"train.log_every={max(1, s.steps // 10)}",
        "train.checkpoint_every=0",
        "train.resume=false",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    return [*data, *run, *loop]


def protocols(s: Setting, clip: dict[str, Any]) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (protocol, dataset, overrides); `clip` holds num_frames, stride and img_size of training."""
    common = ["run.progress=false", "run.cache=false"]
    synthetic = [f"data.options.synthetic_videos={s.videos}", f"data.options.synthetic_seed={s.seed}"]
    clips = [
        *common,
        *synthetic,
        *(f"data.options.{key}={value}" for key, value in clip.items()),
        "data.options.crop_scale=null",
        "data.options.clip_sampling=uniform",
        f"data.options.clips_per_video={s.eval_clips}",
    ]
    return {
        "zero_shot": ("anomaly", "echo_video", [*clips, "anomaly.method=zero_shot", "anomaly.binarize=true"]),
        "ef": (
            "linear",
            "echo_video",
            [*clips, "linear.target=regression", "linear.eval_split=test", "linear.pooling=cls_mean"],
        ),
        "lv": (
            "segment",
            "echo_frames",
            [
                *common,
                *synthetic,
                f"data.options.frames_per_video={s.eval_frames}",
                "segment.eval_split=test",
                "segment.num_classes=2",
                f"segment.epochs={s.segment_epochs}",
                "segment.lr=1e-2",
                "segment.overlays=4",
            ],
        ),
    }


def evaluate(backbone: Any, s: Setting, clip: dict[str, Any], out: Path) -> dict[str, float]:
    """The benchmark's metrics for one backbone (an export path or a module); results go to `out`."""
    results = {
        name: run_protocol(p, backbone, data, overrides, out)[0]
        for name, (p, data, overrides) in protocols(s, clip).items()
    }
    return {
        "zero_shot_balanced_accuracy": results["zero_shot"].metrics["balanced_accuracy"],
        "zero_shot_macro_f1": results["zero_shot"].metrics["macro_f1"],
        "ef_r2": results["ef"].metrics["r2"],
        "ef_mae": results["ef"].metrics["mae"],
        "lv_dice": results["lv"].details["dice"][1],
    }


def random_like(exported: Path, seed: int) -> torch.nn.Module:
    """A freshly initialised backbone with the spec of an exported one."""
    spec = load_backbone(exported).spec
    return seeded_call(seed, lambda: build_backbone(spec))


def run(s: Setting, out: Path, command: str) -> dict[str, Any]:
    """Train the three methods, evaluate them and the random inits; returns the JSON record."""
    start = time.perf_counter()
    root = synthetic_echo("adult", s.videos, s.seed)
    splits = {split: len(video_entries(root, split)) for split in ("train", "val", "test")}
    rows: dict[str, dict[str, Any]] = {}
    exported: dict[str, Path] = {}
    clip: dict[str, Any] = {}
    for method, (config, own) in METHODS.items():
        cfg = load_config(CONFIGS / config, [*own, *train_overrides(method, s, out / "runs")])
        if not method.startswith("DINO"):
            clip = {key: cfg.data.options[key] for key in ("num_frames", "stride", "img_size")}
        shutil.rmtree(Path(cfg.run.out_dir) / cfg.run.name, ignore_errors=True)
        print(f"== train {method} ({config}, {s.steps} steps)", flush=True)
        tic = time.perf_counter()
        result = train(cfg)
        exported[method] = result.exported
        rows[method] = {
            "model": method,
            "arch": load_backbone(result.exported).spec["kind"],
            "steps": s.steps,
            "train_s": round(time.perf_counter() - tic, 1),
            "final_loss": sum(result.losses[-10:]) / len(result.losses[-10:]),
        }
    for row, like in RANDOM_ROWS.items():
        rows[row] = {"model": row, "arch": rows[like]["arch"], "steps": 0, "train_s": 0.0, "final_loss": None}
    for row in rows:
        print(f"== evaluate {row}", flush=True)
        backbone = exported[row] if row in exported else random_like(exported[RANDOM_ROWS[row]], s.seed)
        tic = time.perf_counter()
        rows[row].update(evaluate(backbone, s, clip, out / "eval" / slug(row)))
        rows[row]["eval_s"] = round(time.perf_counter() - tic, 1)
    return {
        "benchmark": "echo",
        "command": command,
        "setting": asdict(s),
        "videos_per_split": splits,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
        "rows": list(rows.values()),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The printed table: metrics to 3 decimals, times in whole seconds."""

    def cell(key: str, value: Any) -> Any:
        return f"{value:.3f}" if key in METRICS else f"{value:.0f}" if key.endswith("_s") else value

    return format_table([{header: cell(key, row[key]) for key, header in COLUMNS.items()} for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, help=f"optimizer steps per method (default {DEFAULT.steps})")
    parser.add_argument("--videos", type=int, help=f"synthetic videos (default {DEFAULT.videos})")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the synthetic set, training and random inits"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny setting: a smoke check in seconds")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/echo"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    s = replace(QUICK if args.quick else DEFAULT, seed=args.seed)
    s = replace(s, steps=args.steps or s.steps, videos=args.videos or s.videos)
    with cpu_threads(args.threads):
        record = run(s, args.out, shlex.join(["python", "benchmarks/echo_benchmark.py", *argv]))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "echo_benchmark.json"
    path.write_text(json.dumps(record, indent=2))
    print(table(record["rows"]))
    print(
        f"videos train/val/test {'/'.join(str(n) for n in record['videos_per_split'].values())}; "
        f"{record['seconds']:.0f} s; {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
