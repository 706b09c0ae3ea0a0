"""Loader benchmark (issue 14): video clips/s, readers, clip position, per-item seeding, AdamW, and the
loader's throughput against what a training step consumes, each against the pipeline before issue 14.

    python benchmarks/loader_benchmark.py [--quick] [--reps N] [--out DIR]

Every comparison is measured in one run with its variants interleaved within each repetition (the
tables hold medians over `--reps` repetitions), so that load on shared cores hits them alike:
  clips/s      the batch stream a training run iterates (first batch, i.e. worker start-up,
               excluded; epoch boundaries included) with 0, 1 and 2 DataLoader workers, on the
               tiny echo sampling and on DISCOVR's sampling scaled down (16 frames at stride 3,
               64 px, its crop), for three pipelines:
                 before  videos with one keyframe, a decord reader opened per item,
                         `torch.manual_seed` and RNG states saved and restored per item, a new
                         loader (new workers) every epoch: the code before issue 14;
                 decord  a keyframe every 0.5 s, decord readers opened per item (kept ones cost
                         more, see `readers`, and crash forked workers), RNG states restored once
                         per batch, one loader (one set of workers) for the run;
                 now     the same with this code's reader: PyAV `VideoFile`s kept open per worker;
  readers      in-process clips/s and CPU per clip, decord vs PyAV, readers kept vs opened per
               item (a kept decord reader's decoder thread decodes ahead after every read);
  position     CPU ms to read (decode) one clip starting at frame 0 vs ending at the last frame,
               for one keyframe vs a keyframe every 0.5 s: decord opened per read (before),
               decord kept, PyAV kept (now);
  seeding      CPU µs per item of seeded items (before: per item; now: one at a time, and a batch
               of the config's size at a time as DataLoader fetches) over the bare item (the same
               work unseeded);
  adamw        CPU ms of an optimizer step of the tiny video objectives: for-loop (before), foreach
               and fused (now, on CPU and CUDA), and the largest parameter difference from the
               for-loop update after one step;
  consumption  clips/s a training step consumes on a fixed batch (batch size / CPU time of the
               step: the rate on a core of its own) for the videomae and discovr tiny configs,
               with the for-loop AdamW (before) and the trainer's own (now); and the loader's
               clips/s (tiny sampling, wall time) divided by it, before and now. A GPU must never
               wait: it must stay above 1.
Everything runs on one torch thread in the main process (workers are single-threaded by torch); the
loader is measured alone, not next to a training model. Clips/s also comes as CPU ms per clip (this
process, its threads and its reaped workers), which other load on shared cores disturbs less than
wall time; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from decord import VideoReader

from eval.results import format_table
from ssl_distill.config import load_config
from ssl_distill.data.echo import write_video
from ssl_distill.data.loader import Key, ResumableSampler, build_loader
from ssl_distill.data.video import ReaderCache, VideoClipDataset, VideoEntry, synthetic_echo
from ssl_distill.engine.trainer import Trainer, build_dataset
from ssl_distill.runtime import cpu_threads

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VIDEOS, BATCH = 16, 4  # the tiny echo configs' synthetic set and clips per step
SAMPLINGS = {  # name -> VideoClipDataset options
    "tiny echo": {"num_frames": 8, "stride": 2, "img_size": 32},
    "DISCOVR scaled": {
        "num_frames": 16,
        "stride": 3,
        "img_size": 64,
        "crop_scale": (0.43, 1.0),
        "crop_ratio": (0.8, 1.25),
    },
}
CONSUMERS = {"videomae": "videomae/tiny_echo.yaml", "discovr": "discovr/tiny_echo.yaml"}


@dataclass(frozen=True)
class Setting:
    reps: int
    batches: int  # batches per clips/s measurement
    items: int  # items per seeding measurement (at least one batch)
    steps: int  # train steps per consumption measurement
    workers: tuple[int, ...] = (0, 1, 2)


DEFAULT = Setting(reps=5, batches=30, items=64, steps=20)
QUICK = Setting(reps=1, batches=3, items=4, steps=2, workers=(0, 2))


def legacy_seeded_call(seed: int, fn: Callable[[], Any]) -> Any:
    """Per-item seeding before issue 14: `torch.manual_seed` (which reseeds every CUDA generator
    too) and every RNG state saved and restored around each item."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return fn()
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def legacy_items(dataset: Any, keys: Sequence[Key]) -> list[Any]:
    """Items of a SeededDataset seeded one by one the old way."""
    return [legacy_seeded_call(seed, lambda i=index: dataset._item(i)) for index, seed in keys]


def decord_reader(path: str) -> VideoReader:
    return VideoReader(path, num_threads=1)


class DecordClips(VideoClipDataset):
    """The dataset's clips read with decord's `get_batch` (the reader before issue 14); readers kept
    in a `ReaderCache` (`open_readers=0`: one opened per item, as before)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.readers = ReaderCache(self.readers.capacity, decord_reader)

    def _read(self, entry: VideoEntry) -> tuple[np.ndarray, None]:
        reader = self.readers.get(entry.path)
        if len(reader) < self.span:
            raise ValueError(f"{len(reader)} frames, fewer than one clip")
        indices = self._starts(len(reader))[:, None] + self.stride * torch.arange(self.num_frames)
        frames = reader.get_batch(indices.flatten().tolist()).asnumpy()
        return frames.reshape(*indices.shape, *frames.shape[1:]), None


class LegacyClips(DecordClips):
    """The dataset as it fetched a batch before issue 14 (with `open_readers=0`)."""

    def __getitems__(self, keys: Sequence[Key]) -> list[dict[str, Any]]:
        return legacy_items(self, keys)


def one_keyframe_copy(root: Path, out: Path) -> Path:
    """The set at `root` re-encoded with a single keyframe per video (as the generator wrote it
    before issue 14); FileList.csv copied."""
    (out / "Videos").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "FileList.csv", out / "FileList.csv")
    for path in sorted((root / "Videos").glob("*.mp4")):
        reader = VideoReader(str(path), num_threads=1)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        write_video(out / "Videos" / path.name, frames, reader.get_avg_fps(), keyframe_seconds=len(frames))
    return out


def cpu_ms(fn: Callable[[], Any]) -> float:
    """CPU ms of fn in this process (all its threads): its cost on a core of its own, which other
    load on shared cores disturbs far less than wall time."""
    tic = time.process_time()
    fn()
    return 1e3 * (time.process_time() - tic)


def batch_stream(dataset: VideoClipDataset, workers: int, per_epoch: bool) -> Iterator[dict[str, Any]]:
    """The batches a run iterates: one loader over the endless sampler, or (before) a new loader,
    with new workers, every epoch."""
    if not per_epoch:
        yield from build_loader(dataset, ResumableSampler(len(dataset), BATCH, endless=True), workers)
        return
    sampler = ResumableSampler(len(dataset), BATCH)
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from build_loader(dataset, sampler, workers)


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its exited, reaped children (workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def clips_per_s(dataset: VideoClipDataset, workers: int, per_epoch: bool, batches: int) -> tuple[float, float]:
    """Clips/s of the stream after its first batch, and CPU ms per clip of the whole stream (worker
    start-up included): less sensitive than wall time to other load on the cores."""
    cpu = cpu_seconds()
    stream = batch_stream(dataset, workers, per_epoch)
    next(stream)
    tic = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - tic
    stream.close()  # shuts the workers down and reaps them
    return batches * BATCH / seconds, 1e3 * (cpu_seconds() - cpu) / ((batches + 1) * BATCH)


def rates(pipelines: dict[str, tuple[VideoClipDataset, bool]], workers: int, s: Setting) -> dict[str, Any]:
    """Clips/s and CPU ms per clip of each pipeline (dataset, loader per epoch), interleaved."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
    for _ in range(s.reps):
        for name, (dataset, per_epoch) in pipelines.items():
            runs[name].append(clips_per_s(dataset, workers, per_epoch, s.batches))
    row = {f"{name} clips/s": statistics.median(rate for rate, _ in runs[name]) for name in pipelines}
    return row | {f"{name} cpu ms/clip": statistics.median(cpu for _, cpu in runs[name]) for name in pipelines}


def loading(s: Setting, data: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for sampling, options in SAMPLINGS.items():
        pipelines = {
            "before": (LegacyClips(data["one keyframe"], split="train", open_readers=0, **options), True),
            "decord": (DecordClips(data["0.5 s"], split="train", open_readers=0, **options), False),
            "now": (VideoClipDataset(data["0.5 s"], split="train", **options), False),
        }
        for workers in s.workers:
            row: dict[str, Any] = {"sampling": sampling, "workers": workers} | rates(pipelines, workers, s)
            row["now / before"] = row["now clips/s"] / row["before clips/s"]
            row["now / decord"] = row["now clips/s"] / row["decord clips/s"]
            rows.append(row)
            print(f"   {row}", flush=True)
    return rows


def readers(s: Setting, data: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for sampling, options in SAMPLINGS.items():
        pipelines = {
            f"{name} {how}": (cls(data["0.5 s"], split="train", open_readers=capacity, **options), False)
            for name, cls in (("decord", DecordClips), ("pyav", VideoClipDataset))
            for how, capacity in (("opened", 0), ("kept", 16))
        }
        rows.append({"sampling": sampling} | rates(pipelines, 0, s))
        print(f"   {rows[-1]}", flush=True)
    return rows


def read_ms(dataset: VideoClipDataset, entry: VideoEntry, start: int) -> float:
    """CPU ms to read (decode) the clip of `entry` that starts at frame `start` (-1: ends at the last frame)."""
    dataset._starts = lambda total: torch.tensor([start % (total - dataset.span + 1)])
    return cpu_ms(lambda: dataset._read(entry))


def position(s: Setting, data: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for sampling, options in SAMPLINGS.items():
        for keyframes, root in data.items():
            datasets = {
                "decord opened": DecordClips(root, split="train", open_readers=0, **options),
                "decord kept": DecordClips(root, split="train", **options),
                "now": VideoClipDataset(root, split="train", **options),
            }
            times: dict[str, list[float]] = {f"{name} {where}": [] for name in datasets for where in ("start", "late")}
            for _ in range(max(3, s.reps)):
                for entry in datasets["now"].entries:
                    for name, dataset in datasets.items():
                        times[f"{name} start"].append(read_ms(dataset, entry, 0))
                        times[f"{name} late"].append(read_ms(dataset, entry, -1))
            row: dict[str, Any] = {"sampling": sampling, "keyframes": keyframes}
            row |= {f"{name} ms": statistics.median(values) for name, values in times.items()}
            for name in datasets:
                row[f"{name} late / start"] = row[f"{name} late ms"] / row[f"{name} start ms"]
            rows.append(row)
            print(f"   {row}", flush=True)
    return rows


def bare_items(dataset: Any, keys: Sequence[tuple[int, int]]) -> list[Any]:
    """The items' work unseeded: the view transform of an image source, or a video item."""
    if hasattr(dataset, "transform"):
        return [dataset.transform(dataset.source[index].image) for index, _ in keys]
    return [dataset._item(index) for index, _ in keys]


def seeding_row(case: str, dataset: Any, batch_size: int, s: Setting) -> dict[str, Any]:
    keys = [(i % len(dataset), 1000 + i) for i in range(max(s.items, batch_size))]
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    variants = {
        "bare": lambda: bare_items(dataset, keys),
        "before": lambda: legacy_items(dataset, keys),
        "one at a time": lambda: [dataset[key] for key in keys],
        "batched": lambda: [item for batch in batches for item in dataset.__getitems__(batch)],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3 * s.reps):
        for name, fn in variants.items():
            times[name].append(cpu_ms(fn) * 1e3 / len(keys))
    row: dict[str, Any] = {"item": case, "batch": batch_size}
    row |= {f"{name} us": statistics.median(values) for name, values in times.items()}
    for name in ("before", "one at a time", "batched"):
        row[f"{name} / bare"] = row[f"{name} us"] / row["bare us"]
    return row


def seeding(s: Setting, out: Path) -> list[dict[str, Any]]:
    cases = {
        "mnist mae": load_config(CONFIGS / "mae/tiny_mnist.yaml", [f"run.out_dir={out}"]),
        "mnist multicrop": load_config(CONFIGS / "dino/tiny_mnist.yaml", [f"run.out_dir={out}"]),
        "echo clip (tiny)": load_config(CONFIGS / CONSUMERS["videomae"], [f"run.out_dir={out}"]),
    }
    rows = []
    for case, cfg in cases.items():
        rows.append(seeding_row(case, build_dataset(cfg), cfg.data.batch_size, s))
        print(f"   {rows[-1]}", flush=True)
    return rows


def trainer(objective: str, out: Path, *overrides: str) -> Trainer:
    cfg = load_config(CONFIGS / CONSUMERS[objective], [f"run.out_dir={out}", "train.progress=false", *overrides])
    return Trainer(cfg)


def adamw(s: Setting, out: Path) -> list[dict[str, Any]]:
    implementations = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    rows = []
    for objective in CONSUMERS:
        optimizers, params = {}, {}
        for name, flags in implementations.items():
            model = trainer(objective, out).objective  # the same init every time
            torch.manual_seed(0)
            for p in model.parameters():
                p.grad = torch.randn_like(p) if p.requires_grad else None
            optimizers[name] = torch.optim.AdamW(model.param_groups(0.05), lr=1e-3, betas=(0.9, 0.95), **flags)
            optimizers[name].step()  # the first step creates the state
            params[name] = [p.detach().clone() for p in model.parameters()]
        times: dict[str, list[float]] = {name: [] for name in implementations}
        for _ in range(max(20, 10 * s.reps)):
            for name, optimizer in optimizers.items():
                times[name].append(cpu_ms(optimizer.step))
        trained = sum(p.numel() for group in optimizers["fused"].param_groups for p in group["params"])
        row: dict[str, Any] = {"objective": objective, "trained parameters": trained}
        row |= {f"{name} ms": statistics.median(times[name]) for name in implementations}
        for name in ("foreach", "fused"):
            row[f"for-loop / {name}"] = row["for-loop ms"] / row[f"{name} ms"]
            row[f"{name} max |diff|"] = max(float((a - b).abs().max()) for a, b in zip(params[name], params["for-loop"]))
        rows.append(row)
        print(f"   {row}", flush=True)
    return rows


def consumption(s: Setting, out: Path, loader_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tiny = [row for row in loader_rows if row["sampling"] == "tiny echo"]
    rows = []
    for objective in CONSUMERS:
        runs = {"before": trainer(objective, out), "now": trainer(objective, out)}
        old = runs["before"]
        old.optimizer = torch.optim.AdamW(old.objective.param_groups(old.cfg.optim.weight_decay), lr=old.lr, betas=tuple(old.cfg.optim.betas))
        stream = batch_stream(old.dataset, 0, per_epoch=False)
        batch = next(stream)
        stream.close()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for step in range(3 + s.steps):  # 3 warm-up steps
            for name, run in runs.items():
                ms = cpu_ms(lambda r=run, b=batch: r.train_step(b))
                if step >= 3:
                    times[name].append(ms)
        row: dict[str, Any] = {"objective": objective}
        for name in runs:
            row[f"{name} step ms"] = statistics.median(times[name])
            row[f"{name} consumed clips/s"] = BATCH / row[f"{name} step ms"] * 1e3
        for loader in tiny:
            for name in ("before", "now"):
                row[f"{name} loader / consumed, {loader['workers']} workers"] = (
                    loader[f"{name} clips/s"] / row[f"{name} consumed clips/s"]
                )
        rows.append(row)
        print(f"   {row}", flush=True)
    return rows


def run(s: Setting, out: Path, command: str) -> dict[str, Any]:
    start, load = time.perf_counter(), os.getloadavg()
    root = synthetic_echo("adult", VIDEOS, 0)
    shutil.rmtree(out / "work", ignore_errors=True)
    data = {"one keyframe": one_keyframe_copy(root, out / "work" / "one_keyframe"), "0.5 s": root}
    sections = {}
    print("== clips/s", flush=True)
    sections["clips_per_s"] = loading(s, data)
    print("== readers", flush=True)
    sections["readers"] = readers(s, data)
    print("== clip position", flush=True)
    sections["position"] = position(s, data)
    print("== per-item seeding", flush=True)
    sections["seeding"] = seeding(s, out / "work")
    print("== AdamW", flush=True)
    sections["adamw"] = adamw(s, out / "work")
    print("== consumption", flush=True)
    sections["consumption"] = consumption(s, out / "work", sections["clips_per_s"])
    shutil.rmtree(out / "work", ignore_errors=True)
    return {
        "benchmark": "loader",
        "command": command,
        "setting": asdict(s),
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
        "load_average": {"start": load, "end": os.getloadavg()},  # other work on the cores
        "sections": sections,
    }


def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rates and µs to whole numbers, differences to 2 significant digits, the rest to 2 decimals."""

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
        record = run(s, args.out, shlex.join(["python", "benchmarks/loader_benchmark.py", *argv]))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "loader_benchmark.json"
    path.write_text(json.dumps(record, indent=2))
    for name, rows in record["sections"].items():
        print(f"\n{name}\n{format_table(rounded(rows))}")
    loads = " -> ".join(f"{record['load_average'][k][0]:.1f}" for k in ("start", "end"))
    print(f"\n{record['seconds']:.0f} s, load average {loads}; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
