"""What a run directory records besides checkpoints and metrics: the configs it ran with (a changed config
on resume keeps the previous one as `config.step<N>.yaml`), its wall time and throughput per session
(`run_stats.json`); `signal_run` sends the process that holds the run's lock its checkpoint signal
(`ssl-distill signal RUN`). A resume that would change the length of the schedules is refused unless
asked for (`train.extend=true`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ssl_distill.engine.rundir import LOCK_NAME, read_holder
from ssl_distill.errors import ConfigError
from ssl_distill.files import write_text_atomic

STATS_FILE = "run_stats.json"


def total_steps(cfg: DictConfig, steps_per_epoch: int) -> int:
    return int(cfg.train.max_steps or cfg.train.epochs * steps_per_epoch)


def check_schedule_length(old: DictConfig, new: DictConfig, steps_per_epoch: int, checkpoint: Path) -> None:
    """Refuse to resume `checkpoint` (trained with config `old`) with a different number of total steps:
    every per-step schedule (lr, weight decay, EMA momentum, temperatures) would jump mid-run."""
    before, after = total_steps(old, steps_per_epoch), total_steps(new, steps_per_epoch)
    if before != after and not new.train.extend:
        raise ConfigError(
            f"{checkpoint} belongs to a run scheduled for {before} steps; train.max_steps / train.epochs now "
            f"give {after}, which would change its lr and other schedules mid-run. Pass train.extend=true to "
            "continue with the schedules recomputed over the new length (the old config is kept), or start a "
            "new run with another run.name"
        )


def archive_config(run_dir: Path, step: int) -> Path | None:
    """Keep the run's current config.yaml as config.step<step>.yaml before a changed config replaces it."""
    current = run_dir / "config.yaml"
    if not current.is_file():
        return None
    kept = run_dir / f"config.step{step:08d}.yaml"
    shutil.copyfile(current, kept)
    return kept


def record_session(
    run_dir: Path, start_step: int, end_step: int, seconds: float, images: int, **info: Any
) -> Path:
    """Append this session (one `fit` call) to run_stats.json; totals over all sessions of the run."""
    path = run_dir / STATS_FILE
    sessions = json.loads(path.read_text())["sessions"] if path.is_file() else []
    sessions = [
        s for s in sessions if s["end_step"] <= start_step
    ]  # a re-run of the same steps replaces them
    sessions.append(
        {
            "start_step": start_step,
            "end_step": end_step,
            "seconds": round(seconds, 3),
            "images": images,
            "images_per_s": round(images / max(seconds, 1e-9), 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
    )
    seconds_total = sum(s["seconds"] for s in sessions)
    images_total = sum(s["images"] for s in sessions)
    stats = {
        "steps": end_step,
        "train_seconds": round(seconds_total, 3),
        "images": images_total,
        "images_per_s": round(images_total / max(seconds_total, 1e-9), 2),
        "sessions": sessions,
    }
    return write_text_atomic(path, json.dumps(stats, indent=2))


def signal_run(run_dir: str | Path, name: str | None = None) -> tuple[int, str]:
    """Send the trainer of a running run its checkpoint signal (or `name`, e.g. 'SIGUSR2'); returns (pid,
    signal name). The process is the one holding the run's lock (`rundir.RunLock`): the trainer itself,
    not a launcher around it (submitit's local controller dies on SIGUSR2)."""
    holder = read_holder(Path(run_dir) / LOCK_NAME)
    if not holder:
        raise FileNotFoundError(f"{run_dir}: no trainer is running there (none holds {LOCK_NAME})")
    if holder.get("host") != socket.gethostname():
        raise ValueError(f"{run_dir} trains on host {holder.get('host')}; run this there")
    if not (name or holder.get("signals")):
        raise ValueError(f"{run_dir}: the trainer takes no stop signal; name one (e.g. SIGUSR1)")
    chosen = name or holder["signals"][0]
    chosen = chosen if chosen.startswith("SIG") else f"SIG{chosen}"
    if chosen not in signal.Signals.__members__:
        raise ValueError(f"unknown signal '{chosen}'")
    os.kill(holder["pid"], signal.Signals[chosen])
    return holder["pid"], chosen
