"""Launching: one process, torchrun DDP (the same `ssl-distill train` command) and SLURM through
submitit with checkpoint-on-signal and requeue."""

from ssl_distill.launch.submit import TrainJob, submit

__all__ = ["TrainJob", "submit"]
