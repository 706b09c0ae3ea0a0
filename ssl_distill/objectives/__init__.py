"""Objectives, one file per method; importing this package registers them all."""

from ssl_distill.objectives import cmd, cotap, dino, discovr, dmae, mae, videomae  # noqa: F401
from ssl_distill.objectives.base import Objective, Output

__all__ = ["Objective", "Output"]
