"""Objectives, one file per method; importing this package registers them all."""

from ssl_distill.objectives import (  # noqa: F401
    cmd,
    cotap,
    dino,
    discovr,
    dmae,
    finetune,
    g2sd,
    hybrid,
    mae,
    mrdd,
    tips,
    videomae,
)
from ssl_distill.objectives.base import Objective, Output

__all__ = ["Objective", "Output"]
