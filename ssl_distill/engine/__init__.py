"""Training engine: trainer loop, schedules, checkpoints, logging."""

from ssl_distill.engine.trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "train"]
