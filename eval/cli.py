"""`ssl-eval <protocol> --backbone <run dir | checkpoint | export | timm name | pixels> [--random-init]
--data <name | folder:PATH | csv:FILE | data.yaml> [key=value ...]` and `ssl-eval report <dirs...>`.

Each protocol writes a JSON result (into --out, default next to the backbone or runs/eval/<name>) and
prints a short table with the number of samples behind each score. Settings: see eval/config.py (e.g.
`knn.ks=[10,20] model.img_size=32 data.limit=500`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import submitit

from eval.api import DEFAULT_DATA, default_out_dir, run_protocol
from eval.config import load_eval_config
from eval.report import build_report
from eval.results import format_table
from eval.sharded import extract_sharded
from ssl_distill.errors import USER_ERRORS, error_line
from ssl_distill.launch.executors import make_executor

HELP = {
    "features": "extract and cache features; shapes and collapse indicators",
    "knn": "weighted kNN classification (k in 10, 20, 100, 200; T=0.07)",
    "linear": "linear probe: logistic regression (C sweep), torch heads, or ridge for continuous targets",
    "segment": "linear segmentation head on frozen patch tokens: mIoU and Dice",
    "retrieve": "retrieval against a gallery: recall@k and mAP (retrieve.protocol=cmd: CMD's Rank-1/5, mAP@100)",
    "anomaly": "kNN-distance anomaly AUROC, or DISCOVR zero-shot kNN (anomaly.method=zero_shot)",
    "cluster": "k-means on frozen features: accuracy (Hungarian), NMI, ARI (e.g. cluster.pooling=consistent)",
    "zeroshot": "zero-shot classification with the run's text tower (prompt ensembles over class names)",
    "text_retrieve": "image<->text retrieval recall@k with the run's text tower",
    "knn-pairs": "nearest-neighbour file for training (CoTAP / STEGO NNS layout) and its label agreement",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-eval", description="Evaluate a frozen backbone.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="protocol")
    for name, text in HELP.items():
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--backbone",
            required=True,
            help="a run directory, checkpoint (.pt), export (.safetensors or timm folder), a timm name with "
            "model.weights=FILE, or 'pixels' (the raw-pixel baseline)",
        )
        command.add_argument(
            "--random-init",
            action="store_true",
            help="random weights of the backbone's architecture (seed model.seed): the baseline to beat",
        )
        command.add_argument(
            "--data",
            default=None,
            help="dataset name, folder:PATH (ImageFolder), csv:FILE (path,label[,split]) or a YAML with a data: "
            f"section, e.g. a training config (default {DEFAULT_DATA.get(name, 'mnist')})",
        )
        command.add_argument(
            "--out", default=None, help="results folder (default: next to the backbone, or runs/eval/<name>)"
        )
        command.add_argument(
            "overrides", nargs="*", metavar="key=value", help="settings, e.g. knn.ks=[10,20]"
        )
        where = command.add_mutually_exclusive_group()
        where.add_argument("--slurm", action="store_true", help="run as a SLURM job via submitit (slurm.* settings)")
        where.add_argument("--local", action="store_true", help="run through submitit's local executor")
        if name == "features":
            command.add_argument(
                "--shards", type=int, default=None, metavar="N",
                help="extract each split as N memory-mapped slices, one array job each (with --slurm / --local)",
            )
    report = commands.add_parser(
        "report", help="collect result JSONs (and metrics.csv) of runs and baselines into Markdown + HTML"
    )
    report.add_argument(
        "paths", nargs="+", metavar="path", help="run or results directories (the first holds the report)"
    )
    report.add_argument("--out", default=None, help="report folder (default <first path>/report)")
    report.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings, e.g. report.projection=pca"
    )
    return parser


class EvalJob:
    """One protocol run as a submitit job (feature extraction is the heavy part)."""

    def __init__(
        self, protocol: str, backbone: str, data: str | None, overrides: list[str], out: str | None, command: str
    ) -> None:
        self.args = (protocol, backbone, data, overrides, out)
        self.command = command

    def __call__(self) -> dict:
        result, path = run_protocol(*self.args, command=self.command)
        return {"metrics": result.metrics, "path": str(path)}

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(EvalJob(*self.args, self.command))  # cached features are reused


def _submit(args: argparse.Namespace, command: str) -> int:
    cfg = load_eval_config(args.data, args.overrides)
    out = Path(args.out) if args.out else default_out_dir(args.backbone, cfg)
    executor = make_executor(cfg.slurm, out / "submitit", f"eval-{args.command}", local=args.local)
    job = executor.submit(EvalJob(args.command, args.backbone, args.data, args.overrides, args.out, command))
    print(f"submitted job {job.job_id}: logs in {job.paths.folder}")
    if args.local:
        print(job.result())
    return 0


def _sharded(args: argparse.Namespace, command: str) -> int:
    """Sharded extraction (eval/sharded.py), then the features protocol on the joined sets, here."""
    launch = "slurm" if args.slurm else "local" if args.local else None
    data = args.data or DEFAULT_DATA.get("features", "mnist")
    out = Path(args.out) if args.out else default_out_dir(args.backbone, load_eval_config(data, args.overrides))
    print(format_table(extract_sharded(args.backbone, data, args.overrides, args.shards, launch, out)))
    result, path = run_protocol("features", args.backbone, data, args.overrides, args.out, command=command)
    print(format_table(result.rows))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # key=value settings may also follow the options
    if any("=" not in item or item.startswith("-") for item in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]
    if args.command == "report":  # report paths and key=value settings arrive in one list
        args.overrides = [*(p for p in args.paths if "=" in p), *args.overrides]
        args.paths = [p for p in args.paths if "=" not in p]
    command = shlex.join(["ssl-eval", *(sys.argv[1:] if argv is None else argv)])
    if getattr(args, "random_init", False):
        args.overrides.append("model.weights=none")
    try:
        if args.command == "report":
            cfg = load_eval_config(None, args.overrides)
            page = build_report(args.paths, args.out, cfg.report)
            print(f"wrote {page} and {page.with_suffix('.md')}")
            return 0
        if getattr(args, "shards", None) is not None:
            return _sharded(args, command)
        if args.slurm or args.local:
            return _submit(args, command)
        result, path = run_protocol(
            args.command, args.backbone, args.data, args.overrides, args.out, command=command
        )
    except USER_ERRORS as error:
        if os.environ.get("SSL_DISTILL_DEBUG"):
            raise
        print(f"ssl-eval: error: {error_line(error)}", file=sys.stderr)
        return 2
    print(format_table(result.rows))
    print("n: " + ", ".join(f"{split} {size}" for split, size in result.details["n"].items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
