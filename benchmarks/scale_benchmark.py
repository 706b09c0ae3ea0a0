"""Scale benchmark (issues 14 and 15): streaming from shards, sharded feature extraction, and the cost of
extraction and a linear probe for a ViT-S-sized backbone.

    python benchmarks/scale_benchmark.py [--images 4000] [--vits-images 512] [--threads 2] [--quick] [--out DIR]

1. Streaming: the first --images bundled MNIST training digits written as a folder of PNG files
   (ImageFolder layout) and as WebDataset shards of 250 (`ssl-distill data shard` of that folder: the same
   PNG bytes). Images per second of one training epoch (batches of 64, the `eval` view transform at 32 px,
   so that reading and decoding dominate) through the trainer's loaders: the folder through
   ResumableSampler + ViewDataset, the shards through ShardStream (shuffle buffer 1000), with 0, 1 and 2
   DataLoader workers; median of 3 epochs.
2. Sharded extraction: features of those digits from a ViT (dim 192, depth 12, 32 px, patch 4, random
   init), one process against `ssl-eval features --shards 4 --local` (4 submitit array jobs running
   concurrently), one torch thread per process: wall seconds, and torch.equal of the joined features with
   the single process's.
3. Per 10k images: ViT-S/16 (vit_small_patch16_224, 384-d, random init) feature extraction at 224 px on
   --vits-images digits (seconds scaled to 10,000 images), and the linear probes (sklearn logistic
   regression with its C sweep; torch linear heads with their lr sweep) on 10,000 clustered 384-d
   features of 10 classes, tested on 2,000.

Writes <out>/scale_benchmark.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from eval.config import load_eval_config
from eval.linear import logistic_probe, torch_probe
from eval.results import format_table
from eval.sharded import extract_sharded
from eval.store import FeatureStore
from ssl_distill.data import ResumableSampler, ViewDataset, build_loader, build_source, build_transform
from ssl_distill.data.bundled import load_mnist
from ssl_distill.data.shards import shard_input, write_shards
from ssl_distill.data.transforms import EvalViewConfig

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = ["model.img_size=32", "model.patch_size=4", "model.embed_dim=192", "model.depth=12", "model.num_heads=3"]


@dataclass(frozen=True)
class Setting:
    images: int = 4000
    shard_size: int = 250
    batch_size: int = 64
    epochs: int = 3
    shards: int = 4
    vits_images: int = 512
    probe_train: int = 10_000
    probe_test: int = 2000
    threads: int = 2


QUICK = Setting(images=256, shard_size=32, batch_size=16, epochs=1, shards=2, vits_images=8, probe_train=500, probe_test=100, threads=1)


def write_folder(root: Path, count: int) -> Path:
    """The first `count` MNIST training digits as root/<digit>/<i>.png (once)."""
    if (root / "done").is_file():
        return root
    images, labels = load_mnist("train")
    for i, (image, label) in enumerate(zip(images[:count], labels[:count])):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f"{i:05d}.png")
    (root / "done").write_text("")
    return root


def images_per_second(loader_of: Any, epochs: int) -> float:
    rates = []
    for epoch in range(epochs):
        loader = loader_of(epoch)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch["index"])
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def streaming(setting: Setting, work: Path) -> list[dict[str, Any]]:
    folder = write_folder(work / "mnist_png", setting.images)
    if not (work / "mnist_shards" / "shards.json").is_file():
        write_shards(shard_input(str(folder)), work / "mnist_shards", setting.shard_size)
    transform = build_transform(OmegaConf.structured(EvalViewConfig(img_size=32)))
    files = ViewDataset(build_source("folder", str(folder)), transform)
    shards = build_source("shards", str(work / "mnist_shards"))
    rows = []
    for workers in (0, 1, 2):
        sampler = ResumableSampler(len(files), setting.batch_size, seed=0)

        def folder_loader(epoch: int, workers: int = workers, sampler: ResumableSampler = sampler) -> Any:
            sampler.set_epoch(epoch)
            return build_loader(files, sampler, workers)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # samples past the last whole batch of a reader slot
            stream = shards.stream(transform, setting.batch_size, seed=0, num_workers=workers)

        def shard_loader(epoch: int, workers: int = workers, stream: Any = stream) -> Any:
            stream.set_epoch(epoch)
            return build_loader(stream, stream, workers)

        folder_rate = images_per_second(folder_loader, setting.epochs)
        shard_rate = images_per_second(shard_loader, setting.epochs)
        rows.append({
            "workers": workers, "images": len(files), "folder_img_s": folder_rate, "shards_img_s": shard_rate,
            "shards_over_folder": shard_rate / folder_rate, "shard_epoch_images": stream.batches_per_epoch * setting.batch_size,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def sharded_extraction(setting: Setting, work: Path) -> dict[str, Any]:
    settings = [
        *TINY_VIT, f"data.limit={setting.images}", f"data.batch_size={setting.batch_size}", "run.progress=false",
        "run.threads=1", f"run.cache_dir={work / 'cache'}", "features.splits=[train]",
    ]
    start = time.perf_counter()
    alone = FeatureStore("vit_tiny_patch16_224", load_eval_config("mnist", [*settings, "run.cache=false"])).features("train")
    one_process = time.perf_counter() - start
    for old in (work / "cache").glob("*/manifest.json"):  # measure the extraction, not a cache hit
        old.unlink()
    start = time.perf_counter()
    extract_sharded("vit_tiny_patch16_224", "mnist", settings, setting.shards, "local", work / "sharded")
    array = time.perf_counter() - start
    joined = FeatureStore("vit_tiny_patch16_224", load_eval_config("mnist", settings)).features("train")
    return {
        "images": len(alone), "dim": alone.feats.shape[1], "one_process_s": one_process, "array_jobs": setting.shards,
        "array_s": array, "speedup": one_process / array, "cpus": os.cpu_count(),
        "identical": bool(torch.equal(joined.feats, alone.feats) and torch.equal(joined.labels, alone.labels)),
    }


def per_10k(setting: Setting, work: Path) -> dict[str, Any]:
    settings = [
        "model.img_size=224", f"data.limit={setting.vits_images}", "data.batch_size=32", "run.progress=false",
        "run.cache=false", f"run.threads={setting.threads}",
    ]
    store = FeatureStore("vit_small_patch16_224", load_eval_config("mnist", settings))
    _ = store.backbone  # built before the clock starts
    start = time.perf_counter()
    feats = store.features("train")
    extraction = time.perf_counter() - start
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 384))
    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, count)
        return (centres[labels] + 3 * rng.standard_normal((count, 384))).astype(np.float32), labels
    (train_x, train_y), (test_x, _) = draw(setting.probe_train), draw(setting.probe_test)
    scale = 10_000 / setting.probe_train
    timings = {}
    for name, probe in (("sklearn", logistic_probe), ("torch", torch_probe)):
        torch.set_num_threads(setting.threads)
        start = time.perf_counter()
        probe(train_x, train_y, test_x, 10)
        timings[name] = (time.perf_counter() - start) * scale
    return {
        "backbone": "vit_small_patch16_224 @224", "dim": feats.feats.shape[1], "images": len(feats),
        "extract_s_per_10k": extraction / len(feats) * 10_000, "extract_img_s": len(feats) / extraction,
        "probe_train": setting.probe_train, "sklearn_probe_s_per_10k": timings["sklearn"],
        "torch_probe_s_per_10k": timings["torch"], "threads": setting.threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=Setting.images)
    parser.add_argument("--vits-images", type=int, default=Setting.vits_images)
    parser.add_argument("--threads", type=int, default=Setting.threads)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "scale")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else replace(Setting(), images=args.images, vits_images=args.vits_images, threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(setting.threads)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["scale_benchmark.py", *argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "setting": asdict(setting),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    record["streaming"] = streaming(setting, args.out)
    torch.set_num_threads(setting.threads)
    record["sharded_extraction"] = sharded_extraction(setting, args.out)
    record["per_10k"] = per_10k(setting, args.out)
    record["seconds"] = time.perf_counter() - started
    record["machine"]["load_average_at_end"] = os.getloadavg()  # other jobs on the same cores
    path = args.out / "scale_benchmark.json"
    path.write_text(json.dumps(record, indent=1))
    for rows in (record["streaming"], [record["sharded_extraction"]], [record["per_10k"]]):
        print(format_table([{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in rows]), end="\n\n")
    print(f"wrote {path} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
