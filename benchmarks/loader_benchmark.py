"""Loader benchmark (issue 14): video clips/s, clip position, per-item seeding, AdamW, and the loader's
throughput against what a training step consumes.

    python benchmarks/loader_benchmark.py [--quick] [--reps N] [--out DIR]

Sections (each timed quantity is a median over `--reps` repetitions, the compared variants
interleaved within each repetition, so that load on shared cores hits them alike):
  clips/s      clips delivered per second by the trainer's own batch stream (`Trainer._batches`,
               the first batch, i.e. worker start-up, excluded; epoch boundaries included), for
               decord (the dataset) and PyAV (`PyAVClips`: the same clips, containers kept open, a
               seek to the keyframe before the clip), with 0, 1 and 2 DataLoader workers; on the
               tiny echo sampling and on DISCOVR's sampling scaled down (16 frames at stride 3,
               64 px, its crop);
  position     ms to read one clip (decode only) starting at frame 0 vs ending at the last frame;
  seeding      per-item cost of a seeded item, fetched as DataLoader does (a batch of the config's
               size at a time) and one at a time, over the bare item (the same work unseeded);
  adamw        optimizer step of the tiny video objectives: for-loop, foreach and fused, and the
               largest parameter difference after one step from the for-loop update;
  consumption  clips/s a training step consumes (batch size / step time on a fixed batch) for the
               videomae and discovr tiny configs, and the loader's clips/s divided by it.
Everything runs on one torch thread in the main process (workers are single-threaded by torch).
Two shared cores: the loader is measured alone, not while a model trains next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from eval.results import format_table
from eval.runtime import cpu_threads
from ssl_distill.config import load_config
from ssl_distill.data.video import VideoClipDataset, VideoEntry
from ssl_distill.engine.trainer import Trainer, build_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SAMPLINGS = {  # name -> data.options on top of configs/base/tiny_echo.yaml
    "tiny echo": {},
    "DISCOVR scaled": {
        "num_frames": 16,
        "stride": 3,
        "img_size": 64,
        "crop_scale": [0.43, 1.0],
        "crop_ratio": [0.8, 1.25],
    },
}
SMALL = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2"]  # a cheap model: only data is timed
CONSUMERS = {  # objective -> config; the model of the tiny config itself
    "videomae": "videomae/tiny_echo.yaml",
    "discovr": "discovr/tiny_echo.yaml",
}


@dataclass(frozen=True)
class Setting:
    reps: int
    batches: int  # batches per clips/s measurement
    items: int  # items per seeding measurement
    steps: int  # train steps per consumption measurement
    workers: tuple[int, ...] = (0, 1, 2)


DEFAULT = Setting(reps=3, batches=60, items=48, steps=30)
QUICK = Setting(reps=1, batches=4, items=4, steps=3, workers=(0, 2))


class PyAVClips(VideoClipDataset):
    """The dataset's clips read with PyAV instead of decord: containers kept open per process, a
    seek to the keyframe at or before the clip's first frame, then decoding up to its last frame
    (only the clip's frames are converted to RGB)."""

    def _container(self, path: Path) -> av.container.InputContainer:
        if getattr(self, "pid", None) != os.getpid():  # forked workers open their own
            self.containers: dict[str, av.container.InputContainer] = {}
            self.pid = os.getpid()
        if str(path) not in self.containers:
            self.containers[str(path)] = av.open(str(path))
        return self.containers[str(path)]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("containers", "pid")}

    def _read(self, entry: VideoEntry) -> tuple[np.ndarray, None]:
        container = self._container(entry.path)
        stream = container.streams.video[0]
        if stream.frames < self.span:
            raise ValueError(f"{stream.frames} frames, fewer than one clip")
        per_frame = 1 / (stream.average_rate * stream.time_base)  # pts units per frame
        start = stream.start_time or 0
        clips = []
        for first in self._starts(stream.frames).tolist():
            wanted = range(first, first + self.span, self.stride)
            container.seek(int(start + first * per_frame), stream=stream, backward=True, any_frame=False)
            frames = {}
            for frame in container.decode(stream):
                index = round((frame.pts - start) / per_frame)
                if index in wanted:
                    frames[index] = frame.to_ndarray(format="rgb24")
                if index >= wanted[-1]:
                    break
            clips.append(np.stack([frames[i] for i in wanted]))
        return np.stack(clips), None


def pyav_like(dataset: VideoClipDataset) -> PyAVClips:
    """The same videos and clip settings, read with PyAV."""
    d = dataset
    return PyAVClips(
        [entry.path for entry in d.entries], num_frames=d.num_frames, stride=d.stride, img_size=d.img_size,
        crop_scale=d.crop_scale, crop_ratio=d.crop_ratio, hflip=d.hflip, mean=d.mean, std=d.std,
    )


def echo_config(config: str, options: dict[str, Any], out: Path, *overrides: str) -> Any:
    """A tiny echo config with `options` in data.options, run on one thread in `out`."""
    extra = [f"data.options.{key}={json.dumps(value)}" for key, value in options.items()]
    return load_config(CONFIGS / config, [*extra, *overrides, f"run.out_dir={out}", "train.threads=1", "train.progress=false", "train.tensorboard=false"])


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1e3 * statistics.median(times)


def clips_per_s(trainer: Trainer, batches: int) -> float:
    """Clips/s of the trainer's batch stream after its first batch (epoch boundaries included)."""
    stream = trainer._batches()
    next(stream)
    tic = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - tic
    stream.close()  # shuts the workers down
    return batches * trainer.cfg.data.batch_size / seconds


def loading(s: Setting, out: Path) -> list[dict[str, Any]]:
    """clips/s per sampling, backend and worker count (median over reps, backends interleaved)."""
    rows = []
    for sampling, options in SAMPLINGS.items():
        for workers in s.workers:
            cfg = echo_config(CONSUMERS["videomae"], options, out, *SMALL, f"data.num_workers={workers}")
            trainer = Trainer(cfg)
            datasets = {"decord": trainer.dataset, "pyav": pyav_like(trainer.dataset)}
            runs: dict[str, list[float]] = {name: [] for name in datasets}
            for _ in range(s.reps):
                for name, dataset in datasets.items():
                    trainer.dataset = dataset
                    runs[name].append(clips_per_s(trainer, s.batches))
            row = {"sampling": sampling, "workers": workers}
            row |= {f"{name} clips/s": statistics.median(values) for name, values in runs.items()}
            row["decord / pyav"] = row["decord clips/s"] / row["pyav clips/s"]
            rows.append(row)
            print(f"   clips/s {sampling}, {workers} workers: {row}", flush=True)
    return rows


def read_ms(dataset: VideoClipDataset, entry: VideoEntry, start: int) -> float:
    """ms to read (decode) the clip of `entry` that starts at frame `start` (negative: from the end)."""
    dataset._starts = lambda total: torch.tensor([start % (total - dataset.span + 1)])
    return median_ms(lambda: dataset._read(entry), 1)


def position(s: Setting, out: Path) -> list[dict[str, Any]]:
    """ms per clip read starting at frame 0 vs ending at the last frame of each train video."""
    rows = []
    for sampling, options in SAMPLINGS.items():
        decord = build_dataset(echo_config(CONSUMERS["videomae"], options, out, *SMALL))
        row: dict[str, Any] = {"sampling": sampling}
        for name, dataset in {"decord": decord, "pyav": pyav_like(decord)}.items():
            times: dict[str, list[float]] = {"start": [], "late": []}
            for _ in range(max(3, s.reps)):
                for entry in dataset.entries:  # start and late interleaved
                    times["start"].append(read_ms(dataset, entry, 0))
                    times["late"].append(read_ms(dataset, entry, -1))
            row[f"{name} start ms"] = statistics.median(times["start"])
            row[f"{name} late ms"] = statistics.median(times["late"])
            row[f"{name} late / start"] = row[f"{name} late ms"] / row[f"{name} start ms"]
        rows.append(row)
        print(f"   position {sampling}: {row}", flush=True)
    return rows


def fetch_batches(dataset: Any, keys: list[tuple[int, int]], batch_size: int) -> list[Any]:
    """What DataLoader's fetcher does, batch by batch."""
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    if hasattr(dataset, "__getitems__"):
        return [item for batch in batches for item in dataset.__getitems__(batch)]
    return [dataset[key] for key in keys]


def bare_items(dataset: Any, keys: list[tuple[int, int]]) -> list[Any]:
    """The items' work without seeding: the view transform of an image source, or a video item."""
    if hasattr(dataset, "transform"):
        return [dataset.transform(dataset.source[index].image) for index, _ in keys]
    return [dataset._item(index) for index, _ in keys]


def seeding_row(case: str, dataset: Any, batch_size: int, s: Setting) -> dict[str, Any]:
    """µs per item: bare, seeded one at a time, seeded a batch (of the config's size) at a time."""
    keys = [(i % len(dataset), 1000 + i) for i in range(max(s.items, batch_size))]
    variants = {
        "bare": lambda: bare_items(dataset, keys),
        "one at a time": lambda: [dataset[key] for key in keys],
        "batched": lambda: fetch_batches(dataset, keys, batch_size),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(3, s.reps)):
        for name, fn in variants.items():
            times[name].append(median_ms(fn, 1) * 1e3 / len(keys))
    row: dict[str, Any] = {"item": case, "batch": batch_size}
    row |= {f"{name} us": statistics.median(v) for name, v in times.items()}
    row["one at a time / bare"] = row["one at a time us"] / row["bare us"]
    row["batched / bare"] = row["batched us"] / row["bare us"]
    return row


def seeding(s: Setting, out: Path) -> list[dict[str, Any]]:
    cases = {
        "mnist mae": load_config(CONFIGS / "mae/tiny_mnist.yaml", [f"run.out_dir={out}"]),
        "mnist multicrop": load_config(CONFIGS / "dino/tiny_mnist.yaml", [f"run.out_dir={out}"]),
        "echo clip (tiny)": echo_config(CONSUMERS["videomae"], {}, out),
    }
    rows = []
    for case, cfg in cases.items():
        rows.append(seeding_row(case, build_dataset(cfg), cfg.data.batch_size, s))
        print(f"   seeding {case}: {rows[-1]}", flush=True)
    return rows


def adamw(s: Setting, out: Path) -> list[dict[str, Any]]:
    """ms per AdamW step (for-loop, foreach, fused) on the tiny video objectives' parameters."""
    implementations = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    rows = []
    for objective, config in CONSUMERS.items():
        optimizers, params = {}, {}
        for name, flags in implementations.items():
            model = Trainer(echo_config(config, {}, out)).objective  # the same init every time
            torch.manual_seed(0)
            for p in model.parameters():
                p.grad = torch.randn_like(p) if p.requires_grad else None
            optimizers[name] = torch.optim.AdamW(model.param_groups(0.05), lr=1e-3, betas=(0.9, 0.95), **flags)
            optimizers[name].step()  # the first step creates the state
            params[name] = [p.detach().clone() for p in model.parameters()]
        times: dict[str, list[float]] = {name: [] for name in implementations}
        for _ in range(max(20, 10 * s.reps)):
            for name, optimizer in optimizers.items():
                times[name].append(median_ms(optimizer.step, 1))
        row: dict[str, Any] = {"objective": objective, "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        for name in implementations:
            row[f"{name} ms"] = statistics.median(times[name])
        for name in ("foreach", "fused"):
            row[f"for-loop / {name}"] = row["for-loop ms"] / row[f"{name} ms"]
            row[f"{name} max |diff|"] = max(float((a - b).abs().max()) for a, b in zip(params[name], params["for-loop"]))
        rows.append(row)
        print(f"   adamw {objective}: {row}", flush=True)
    return rows


def step_ms(trainer: Trainer, steps: int) -> float:
    """Median ms of a train step on one fixed batch, after 3 warm-up steps."""
    stream = trainer._batches()
    batch = next(stream)
    stream.close()
    for _ in range(3):
        trainer.train_step(batch)
    return median_ms(lambda: trainer.train_step(batch), steps)


def consumption(s: Setting, out: Path, loader_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Clips/s a train step consumes (tiny configs), and decord loader clips/s over it per worker count."""
    loader = {row["workers"]: row["decord clips/s"] for row in loader_rows if row["sampling"] == "tiny echo"}
    rows = []
    for objective, config in CONSUMERS.items():
        trainer = Trainer(echo_config(config, {}, out))
        step = step_ms(trainer, s.steps)
        consumed = trainer.cfg.data.batch_size / step * 1e3
        row: dict[str, Any] = {"objective": objective, "step ms": step, "consumed clips/s": consumed}
        row |= {f"loader / consumed, {w} workers": clips / consumed for w, clips in loader.items()}
        rows.append(row)
        print(f"   consumption {objective}: {row}", flush=True)
    return rows


def run(s: Setting, command: str) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        print("== clips/s", flush=True)
        loader_rows = loading(s, out)
        print("== clip position", flush=True)
        position_rows = position(s, out)
        print("== per-item seeding", flush=True)
        seeding_rows = seeding(s, out)
        print("== AdamW", flush=True)
        adamw_rows = adamw(s, out)
        print("== consumption", flush=True)
        consumption_rows = consumption(s, out, loader_rows)
    return {
        "benchmark": "loader",
        "command": command,
        "setting": asdict(s),
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
        "sections": {
            "clips_per_s": loader_rows,
            "position": position_rows,
            "seeding": seeding_rows,
            "adamw": adamw_rows,
            "consumption": consumption_rows,
        },
    }


def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios and ms to 2 decimals, rates and µs to whole numbers, differences in 2 significant digits."""

    def cell(key: str, value: Any) -> Any:
        if not isinstance(value, float):
            return value
        if "diff" in key:
            return f"{value:.2g}"
        return f"{value:.0f}" if key.endswith(("/s", "us")) else f"{value:.2f}"

    return [{key: cell(key, value) for key, value in row.items()} for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny setting: a smoke check")
    parser.add_argument("--reps", type=int, help=f"repetitions per measurement (default {DEFAULT.reps})")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/loader"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    s = QUICK if args.quick else DEFAULT
    s = replace(s, reps=args.reps or s.reps)
    with cpu_threads(1):
        record = run(s, shlex.join(["python", "benchmarks/loader_benchmark.py", *argv]))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "loader_benchmark.json"
    path.write_text(json.dumps(record, indent=2))
    for name, rows in record["sections"].items():
        print(f"\n{name}\n{format_table(rounded(rows))}")
    print(f"\n{record['seconds']:.0f} s; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
