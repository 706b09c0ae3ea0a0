"""Per-step loss traces of every objective on a fixed seed: record them, or compare against a record.

A refactor that must not change the numbers (issue 8) records the traces on the old code and compares
the new code against them:

    python benchmarks/loss_traces.py --record benchmarks/results/loss_traces.json
    python benchmarks/loss_traces.py --compare benchmarks/results/loss_traces.json

Each objective runs `--steps` optimizer steps of its tiny config shrunk to a CPU-sized model (the same
overrides as the tests), on one thread; the trace holds the total loss and every logged term per step.
`tests/test_loss_traces.py` compares the first steps of each against `loss_traces.json` on every
`make test`, with a tolerance that allows for another CPU's kernels; a change that moves the numbers on
purpose re-records it and says why in its commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

TINY = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "data.batch_size=8",
    "data.limit=64",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "train.threads=1",
    "optim.lr=1e-3",
]
DECODER = ["objective.decoder.dim=32", "objective.decoder.depth=1", "objective.decoder.heads=2"]
DINO_HEAD = ["objective.output_dim=64", "objective.hidden_dim=32", "objective.bottleneck_dim=16"]
VIDEO = ["data.batch_size=2", "model.embed_dim=32", "model.depth=2"]

# objective -> (config, extra overrides); dmae's teacher is the mae run of the same trace set
OBJECTIVES = {
    "mae": ("mae/tiny_mnist.yaml", DECODER),
    "dmae": ("dmae/tiny_mnist.yaml", DECODER),
    "dino": ("dino/tiny_mnist.yaml", [*DINO_HEAD, "data.transform.n_local_views=2"]),
    "dino_drop_path": ("dino/tiny_mnist.yaml", [*DINO_HEAD, "data.transform.n_local_views=2", "model.drop_path_rate=0.2"]),
    "videomae": ("videomae/tiny_echo.yaml", [*DECODER, *VIDEO]),
    "discovr": ("discovr/tiny_echo.yaml", [*DECODER, *VIDEO, *DINO_HEAD, "objective.num_prototypes=8"]),
}


def trace(name: str, out: Path, steps: int, teacher: Path | None, stop_at: int | None = None) -> dict[str, list[float]]:
    """Train `name` in `out` on a `steps`-step schedule (stopping after `stop_at` steps when given); return
    {'loss': [...], <term>: [...]} per step run."""
    from ssl_distill.config import load_config
    from ssl_distill.engine import train

    config, extra = OBJECTIVES[name]
    overrides = [*TINY, *extra, f"run.out_dir={out}", f"run.name={name}", f"train.max_steps={steps}"]
    if name == "dmae":
        overrides.append(f"objective.teacher.source={teacher}")
    result = train(load_config(CONFIGS / config, overrides), stop_at=stop_at)
    with open(result.run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    skip = {"step", "lr", "images_per_s", "epoch"}
    terms = {key: [float(row[key]) for row in rows] for key in rows[0] if key not in skip and row_ok(rows, key)}
    return {"loss": [float(x) for x in result.losses], **{k: v for k, v in terms.items() if k != "loss"}}


def row_ok(rows: list[dict[str, str]], key: str) -> bool:
    return all(row.get(key) not in (None, "") for row in rows)


def run_all(names: list[str], steps: int) -> dict[str, dict[str, list[float]]]:
    torch.set_num_threads(1)
    traces: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        teacher = None
        if "dmae" in names and "mae" not in names:
            names = ["mae", *names]
        for name in names:
            traces[name] = trace(name, out, steps, teacher)
            if name == "mae":
                teacher = out / "mae"
            print(f"{name:15s} loss[0]={traces[name]['loss'][0]:.6f} loss[-1]={traces[name]['loss'][-1]:.6f}", flush=True)
    return traces


# runs whose numbers the toolkit refactor changes on purpose (issue 8), with the reason
EXPECTED_CHANGES = {
    "dino_drop_path": "the EMA teacher no longer drops paths (it was stochastic with drop_path_rate > 0)",
    "discovr": "the four fixes to match the released code (momenta, decoder input, positions, image encoders)",
}


def compare(recorded: dict, current: dict, atol: float) -> list[tuple[str, str, float]]:
    """(objective, term, max |difference|) for every term in both traces."""
    rows = []
    for name, terms in current.items():
        for term, values in terms.items():
            if name in recorded and term in recorded[name]:
                old = recorded[name][term]
                diff = max((abs(a - b) for a, b in zip(old, values)), default=math.inf)
                rows.append((name, term, diff if len(old) == len(values) else math.inf))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", type=Path, help="write the traces of the current code here")
    action.add_argument("--compare", type=Path, help="compare the current code with this record")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES))
    args = parser.parse_args(argv)
    if args.record:
        traces = run_all(args.objectives, args.steps)
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps({"steps": args.steps, "traces": traces}, indent=1))
        print(f"wrote {args.record}")
        return 0
    recorded = json.loads(args.compare.read_text())["traces"]
    current = run_all([n for n in args.objectives if n in recorded], args.steps)
    print(f"\n| objective | term | max abs difference over {args.steps} steps | within {args.atol:g} |")
    print("|---|---|---|---|")
    ok = True
    for name, term, diff in compare(recorded, current, args.atol):
        within = diff <= args.atol
        ok &= within or name in EXPECTED_CHANGES
        verdict = "yes" if within else f"no (expected: {EXPECTED_CHANGES[name]})" if name in EXPECTED_CHANGES else "NO"
        print(f"| {name} | {term} | {diff:.3g} | {verdict} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
