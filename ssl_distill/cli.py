"""`ssl-distill train | export | data` — errors a user can fix print one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_distill.config import ConfigError


def _train(args: argparse.Namespace) -> None:
    from ssl_distill.config import load_config
    from ssl_distill.engine import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    print(f"run:        {result.run_dir}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"backbone:   {result.exported}")


def _export(args: argparse.Namespace) -> None:
    from ssl_distill.backbones import export_backbone, load_backbone

    path = export_backbone(load_backbone(args.checkpoint), args.out)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an objective from a YAML config")
    train.add_argument("config", type=Path)
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
    train.set_defaults(run=_train)
    export = commands.add_parser("export", help="write a checkpoint's backbone as timm-loadable safetensors")
    export.add_argument("checkpoint", help="checkpoint .pt or run directory")
    export.add_argument("out", type=Path)
    export.set_defaults(run=_export)
    return parser


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, KeyError)


def main(argv: list[str] | None = None) -> int:
    from ssl_distill.backbones import BackboneLoadError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (*USER_ERRORS, BackboneLoadError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ssl-distill: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
