"""Training engine: trainer loop, schedules, checkpoints, logging."""

from ssl_distill.engine.trainer import NonFiniteLossError, Preempted, Trainer, TrainResult, train

__all__ = ["NonFiniteLossError", "Preempted", "TrainResult", "Trainer", "train"]
