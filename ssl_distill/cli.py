"""`ssl-distill train | launch | export | signal | data` — errors a user can fix print one line and exit 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ssl_distill.errors import USER_ERRORS, error_line

STOPPED_FOR_REQUEUE = 3  # exit code after a checkpointed stop on SIGUSR1 / SIGTERM (see slurm/)


def _train(args: argparse.Namespace) -> int:
    """Train in this process, or as one rank of torchrun / srun (read from the environment)."""
    from ssl_distill.config import load_config
    from ssl_distill.engine import Preempted, Trainer
    from ssl_distill.engine.distributed import init_distributed

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, init_distributed())
    try:
        with trainer.stop_on_signals(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            result = trainer.fit()
    except Preempted as stop:
        print(f"ssl-distill: {stop}; run the same command to resume", file=sys.stderr)
        return STOPPED_FOR_REQUEUE
    if trainer.is_main:
        print(f"run:        {result.run_dir}")
        print(f"checkpoint: {result.checkpoint}")
        print(f"backbone:   {result.exported}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    """Submit to SLURM with submitit (or run through its local executor with --local)."""
    from ssl_distill.config import load_config
    from ssl_distill.launch.submit import submit

    cfg = load_config(args.config, args.overrides)
    job = submit(cfg, local=args.local)
    print(f"submitted job {job.job_id}: logs in {job.paths.folder}")
    if args.wait or args.local:
        print(job.result())
    return 0


def _export(args: argparse.Namespace) -> int:
    """OUT ending in .safetensors: the single file; any other OUT: a folder in timm's layout."""
    from ssl_distill.backbones import export_backbone, load_backbone
    from ssl_distill.backbones.export import export_timm_folder, preprocess_of, read_preprocess

    backbone = load_backbone(args.checkpoint)
    preprocess = read_preprocess(args.checkpoint) or preprocess_of({"data": {}})
    if args.out.suffix == ".safetensors":
        path = export_backbone(backbone, args.out, preprocess)
    elif (path := export_timm_folder(backbone, args.out, preprocess)) is None:
        kind = backbone.spec["kind"]
        raise ValueError(f"{args.checkpoint}: a {kind} backbone has no timm layout; export to a .safetensors file")
    print(f"wrote {path}")
    return 0


def _signal(args: argparse.Namespace) -> int:
    from ssl_distill.engine.run_record import signal_run

    pid, name = signal_run(args.run_dir, args.signal)
    print(f"sent {name} to the trainer of {args.run_dir} (pid {pid}): it checkpoints at the end of its step and stops")
    return 0


def _synth_echo(args: argparse.Namespace) -> int:
    from ssl_distill.data.echo import write_synthetic_echo

    out = write_synthetic_echo(
        args.out, n=args.n, preset=args.preset, seed=args.seed, size=args.size, frames=args.frames,
        fps=args.fps, abnormal_fraction=args.abnormal_fraction,
    )
    print(f"wrote {args.n} videos, FileList.csv, masks and latents.json to {out}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from ssl_distill.config import ConfigError
    from ssl_distill.data.shards import shard_input, write_shards

    if bad := [item for item in args.option if "=" not in item]:
        raise ConfigError(f"--option '{bad[0]}' is not of the form key=value")
    options = OmegaConf.to_container(OmegaConf.from_dotlist(args.option))
    source = shard_input(args.src, args.split, args.limit, **options)
    manifest = write_shards(source, args.out, args.shard_size, progress=True)
    skipped = f"; skipped {len(manifest['skipped'])} unreadable (see the warnings)" if manifest["skipped"] else ""
    print(f"wrote {manifest['count']} {manifest['kind']} samples in {len(manifest['shards'])} shards to {args.out}{skipped}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an objective from a YAML config")
    train.add_argument("config", type=Path)
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
    train.set_defaults(run=_train)
    launch = commands.add_parser("launch", help="submit training to SLURM with submitit (slurm.* keys)")
    launch.add_argument("config", type=Path)
    launch.add_argument("overrides", nargs="*", help="key=value overrides, e.g. slurm.nodes=2 slurm.partition=gpu")
    where = launch.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="submit to SLURM (the default)")
    where.add_argument("--local", action="store_true", help="run through submitit's local executor and wait")
    launch.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    launch.set_defaults(run=_launch)
    export = commands.add_parser(
        "export", help="write a backbone as a timm folder (config.json + model.safetensors) or one .safetensors file"
    )
    export.add_argument("checkpoint", help="run directory, checkpoint .pt or export")
    export.add_argument("out", type=Path, help="a folder (timm's layout), or a file ending in .safetensors")
    export.set_defaults(run=_export)
    stop = commands.add_parser(
        "signal", help="send a running trainer its checkpoint-and-stop signal (what SLURM sends before preemption)"
    )
    stop.add_argument("run_dir", metavar="run", type=Path, help="the run directory")
    stop.add_argument("--signal", default=None, help="signal name (default: the first one the trainer listens to)")
    stop.set_defaults(run=_signal)
    data = commands.add_parser("data", help="generate data sets")
    generators = data.add_subparsers(dest="generator", required=True)
    echo = generators.add_parser("synth-echo", help="synthetic echocardiography videos in EchoNet-Dynamic layout")
    echo.add_argument("out", type=Path)
    echo.add_argument("--n", type=int, default=48, help="number of videos")
    echo.add_argument("--preset", choices=("adult", "pediatric", "camus"), default="adult")
    echo.add_argument("--seed", type=int, default=0)
    echo.add_argument("--size", type=int, default=112, help="frame height and width in pixels")
    echo.add_argument("--frames", type=int, default=None, help="frames per video (default: drawn per video)")
    echo.add_argument("--fps", type=int, default=50)
    echo.add_argument("--abnormal-fraction", type=float, default=0.5)
    echo.set_defaults(run=_synth_echo)
    shard = generators.add_parser(
        "shard", help="write an image source or videos as WebDataset tar shards (data.name=shards reads them)"
    )
    shard.add_argument("src", help="dataset name (mnist, shapes, echo_video, ...), image folder, CSV, or EchoNet-style folder")
    shard.add_argument("out", type=Path, help="folder for shard-NNNNNN.tar and shards.json")
    shard.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    shard.add_argument("--split", default="train")
    shard.add_argument("--limit", type=int, default=None, help="only the first N items")
    shard.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option (repeatable)")
    shard.set_defaults(run=_shard)
    return parser




def main(argv: list[str] | None = None) -> int:
    """Errors a user can fix (`USER_ERRORS`) print one line and exit 2; SSL_DISTILL_DEBUG=1 shows the
    traceback instead."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # key=value overrides may also follow the options
    if extra and (not hasattr(args, "overrides") or any("=" not in item or item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if os.environ.get("SSL_DISTILL_DEBUG"):
            raise
        print(f"ssl-distill: error: {error_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
