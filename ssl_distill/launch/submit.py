"""SLURM (and submitit's local executor) launching.

`TrainJob` is the picklable unit submitit runs on every task. On submitit's preemption / time-limit
signal it does not save mid-step from inside the signal handler: the trainer finishes the current
step, writes a checkpoint at that step, and only then is submitit's own handler called to requeue
the job; the requeued job resumes from that checkpoint (data order included) in the same run
directory, so its metrics continue the same log.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig

from ssl_distill.config import from_yaml, to_yaml
from ssl_distill.engine.distributed import init_distributed
from ssl_distill.engine.trainer import Preempted, Trainer
from ssl_distill.launch.executors import make_executor


def _preemption_signal() -> int:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class TrainJob:
    """Train one config; submitit calls `checkpoint()` to get the job it requeues."""

    def __init__(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml

    def __call__(self) -> dict[str, Any]:
        if "WORLD_SIZE" not in os.environ or "SLURM_JOB_ID" in os.environ:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        trainer = Trainer(from_yaml(self.config_yaml), init_distributed())
        signum = _preemption_signal()
        submitit_handler = signal.getsignal(signum)
        try:
            with trainer.stop_on_signals(signum):
                result = trainer.fit()
        except Preempted as stop:
            print(stop, flush=True)
            if trainer.is_main and callable(submitit_handler):
                submitit_handler(signum, None)  # calls checkpoint(), requeues and exits
            return {"preempted_at": stop.step, "checkpoint": str(stop.checkpoint)}
        return {
            "run_dir": str(result.run_dir),
            "checkpoint": str(result.checkpoint),
            "backbone": str(result.exported),
            "steps": result.steps,
            "last_loss": result.losses[-1] if result.losses else None,
        }

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(self.config_yaml))


def submit(cfg: DictConfig, local: bool = False) -> submitit.Job:
    """Submit a training job for `cfg`; returns the submitit job (`job.result()` waits for it)."""
    executor = make_executor(cfg.slurm, Path(cfg.run.out_dir) / cfg.run.name / "submitit", cfg.run.name, local)
    return executor.submit(TrainJob(to_yaml(cfg)))
