"""`ssl-eval <protocol> --backbone <checkpoint | export.safetensors | timm name> --data <name | data.yaml>
[key=value ...]` and `ssl-eval report <run or results dir>`.

Each protocol writes a JSON result (into --out, default next to the backbone or runs/eval/<name>) and
prints a short table. Settings: see eval/config.py (e.g. `knn.ks=[10,20] model.img_size=32 data.limit=500`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import submitit

from eval.api import DEFAULT_DATA, default_out_dir, run_protocol
from eval.config import load_eval_config
from eval.report import build_report
from eval.results import format_table
from ssl_distill.launch.executors import make_executor

HELP = {
    "features": "extract and cache features; shapes and collapse indicators",
    "knn": "weighted kNN classification (k in 10, 20, 100, 200; T=0.07)",
    "linear": "linear probe: logistic regression (C sweep), torch heads, or ridge for continuous targets",
    "segment": "linear segmentation head on frozen patch tokens: mIoU and Dice",
    "retrieve": "retrieval against a gallery: recall@k and mAP (retrieve.protocol=cmd: CMD's Rank-1/5, mAP@100)",
    "anomaly": "kNN-distance anomaly AUROC, or DISCOVR zero-shot kNN (anomaly.method=zero_shot)",
    "knn-pairs": "nearest-neighbour file for training (CoTAP / STEGO NNS layout) and its label agreement",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-eval", description="Evaluate a frozen backbone.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="protocol")
    for name, text in HELP.items():
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--backbone", required=True, help="our checkpoint (.pt), an exported .safetensors, or a timm name"
        )
        command.add_argument(
            "--data",
            default=None,
            help=f"bundled dataset name or dataset YAML (default {DEFAULT_DATA.get(name, 'mnist')})",
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
    report = commands.add_parser("report", help="collect result JSONs (and metrics.csv) into Markdown + HTML")
    report.add_argument("path", help="a run directory or a results directory")
    report.add_argument("--out", default=None, help="report folder (default <path>/report)")
    report.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings, e.g. report.projection=pca"
    )
    return parser


class EvalJob:
    """One protocol run as a submitit job (feature extraction is the heavy part)."""

    def __init__(self, protocol: str, backbone: str, data: str | None, overrides: list[str], out: str | None) -> None:
        self.args = (protocol, backbone, data, overrides, out)

    def __call__(self) -> dict:
        result, path = run_protocol(*self.args)
        return {"metrics": result.metrics, "path": str(path)}

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(EvalJob(*self.args))  # features cached so far are reused


def _submit(args: argparse.Namespace) -> int:
    cfg = load_eval_config(args.data, args.overrides)
    out = Path(args.out) if args.out else default_out_dir(args.backbone)
    executor = make_executor(cfg.slurm, out / "submitit", f"eval-{args.command}", local=args.local)
    job = executor.submit(EvalJob(args.command, args.backbone, args.data, args.overrides, args.out))
    print(f"submitted job {job.job_id}: logs in {job.paths.folder}")
    if args.local:
        print(job.result())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # key=value settings may also follow the options
    if any("=" not in item or item.startswith("-") for item in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "report":
            cfg = load_eval_config(None, args.overrides)
            page = build_report(args.path, args.out, cfg.report)
            print(f"wrote {page} and {page.with_suffix('.md')}")
            return 0
        if args.slurm or args.local:
            return _submit(args)
        result, path = run_protocol(args.command, args.backbone, args.data, args.overrides, args.out)
    except (ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ssl-eval: error: {message}", file=sys.stderr)
        return 2
    print(format_table(result.rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
