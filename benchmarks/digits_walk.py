"""The path a new user walks, on data nobody here trains on: scikit-learn's bundled 8x8 digits written as an
ImageFolder tree (1,437 train / 360 val, stratified), an MAE trained on it with the online kNN monitor,
then kNN and linear probes of the trained backbone against its random init and the raw pixels, and the
two checks of issue 10: a class absent from val leaves the kNN of the other classes unchanged, and a
moved file invalidates the feature cache. Prints a table and writes JSON.

    python benchmarks/digits_walk.py [--quick] [--out runs/digits_walk]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from eval.api import run_protocol
from eval.report import build_report
from eval.results import format_table
from ssl_distill.config import load_config
from ssl_distill.engine import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_digits(root: Path, skip_val: tuple[int, ...] = ()) -> Path:
    """root/{train,val}/<digit>/<index>.png at 32 px (nearest), split 80/20 stratified with seed 0."""
    digits = load_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, random_state=0, stratify=digits.target
    )
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for index in indices:
            label = int(digits.target[index])
            if split == "val" and label in skip_val:
                continue
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(folder / f"{index}.png")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="60 training steps instead of 600")
    parser.add_argument("--out", default="runs/digits_walk")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    torch.set_num_threads(1)
    data = write_digits(out / "digits")
    steps = 60 if args.quick else 600
    cfg = load_config(
        CONFIGS / "mae/tiny_mnist.yaml",
        [
            "data.name=folder",
            f"data.root={data}",
            "run.name=mae_digits",
            f"run.out_dir={out}",
            "model.embed_dim=64",
            "model.depth=4",
            "model.num_heads=2",
            "objective.decoder.dim=64",
            "objective.decoder.heads=2",
            "objective.decoder.depth=1",
            f"train.max_steps={steps}",
            "train.log_every=20",
            f"monitor.every={steps // 3 // 20 * 20 or 20}",
            "train.progress=false",
            "optim.lr=1e-3",
        ],
    )
    run = train(cfg).run_dir
    settings = ["run.progress=false", f"run.cache_dir={out / 'cache'}", "linear.max_iter=2000"]
    rows = []
    for name, backbone, extra, where in (
        ("MAE (trained)", run, [], None),
        ("random init (same shape)", run, ["model.weights=none"], None),
        ("pixels (32 px)", "pixels", [], run / "eval" / "pixels"),
    ):
        row = {"backbone": name}
        for protocol in ("knn", "linear"):
            result, _ = run_protocol(protocol, backbone, f"folder:{data}", [*settings, *extra], where)
            row[f"{protocol}_top1"] = result.metrics["top1"]
            row["n (train → val)"] = " → ".join(str(v) for v in result.details["n"].values())
        rows.append(row)
    monitor = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    column = monitor[0].index("monitor/knn_top1")
    monitored = {int(r[0]): float(r[column]) for r in monitor[1:] if r[column]}

    # check 1: val without digit 3 scores the other digits exactly as the full val does
    gap = write_digits(out / "digits_no3", skip_val=(3,))
    quiet = ["run.progress=false", "run.cache=false"]
    with_gap, _ = run_protocol("knn", run, f"folder:{gap}", quiet, write=False)
    full, _ = run_protocol("knn", run, f"folder:{data}", quiet, write=False)
    kept = torch.tensor(full.details["confusion"])
    kept[3] = 0
    class_gap_same = torch.equal(torch.tensor(with_gap.details["confusion"]), kept)

    # check 2: move 10 val images from digit 3 to digit 8; the cache must miss and agree with no cache
    cached, _ = run_protocol("knn", run, f"folder:{data}", settings, write=False)
    before = torch.tensor(cached.details["confusion"]).sum(1).tolist()
    for image in sorted((data / "val" / "3").iterdir())[:10]:
        shutil.move(image, data / "val" / "8" / image.name)
    after, _ = run_protocol("knn", run, f"folder:{data}", settings, write=False)
    uncached, _ = run_protocol("knn", run, f"folder:{data}", quiet, write=False)
    moved_counts = torch.tensor(after.details["confusion"]).sum(1).tolist()
    cache_follows = after.metrics == uncached.metrics and moved_counts[3] == before[3] - 10

    build_report([run], cfg=None)
    table = format_table(rows)
    print(table)
    print(f"monitor kNN top-1 by step: {monitored}")
    print(f"class absent from val gives the same kNN on the others: {class_gap_same}")
    print(f"moved files: val class sizes {moved_counts}; cached run equals uncached: {cache_follows}")
    record = {
        "command": f"python benchmarks/digits_walk.py{' --quick' if args.quick else ''}",
        "steps": steps,
        "rows": rows,
        "monitor_knn_top1": monitored,
        "class_gap_same_knn": class_gap_same,
        "moved_files_invalidate_cache": cache_follows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    results = Path(__file__).parent / "results" / f"digits_walk{'_quick' if args.quick else ''}.json"
    results.write_text(json.dumps(record, indent=2))
    print(f"wrote {results}; report in {run / 'report'}")
    return 0 if class_gap_same and cache_follows else 1


if __name__ == "__main__":
    raise SystemExit(main())
