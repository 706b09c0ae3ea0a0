"""Metrics to `metrics.csv` (one row per logged step) and TensorBoard, from rank 0 only."""

from __future__ import annotations

import csv
import time
import warnings
from pathlib import Path


class MetricsLogger:
    """Appends rows; on resume, rows past the resumed step (written after the last checkpoint) are dropped
    so the log reads as one continuous run. A run that starts over at step 0 next to an old metrics.csv (its
    checkpoints were deleted) moves the old file aside, with a warning, instead of dropping its rows."""

    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.columns: list[str] | None = None
        self.writer = None
        if not enabled:
            return
        if self.path.is_file() and resume_step == 0 and self.path.stat().st_size > 0:
            kept = self.path.with_name(f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.csv")
            self.path.replace(kept)
            warnings.warn(
                f"{run_dir}: no checkpoint to resume from, so the run starts at step 0; the old metrics.csv "
                f"is kept as {kept.name}",
                stacklevel=2,
            )
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
            if rows:
                self.columns = list(rows[0])
            self._rewrite(rows)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def _rewrite(self, rows: list[dict]) -> None:
        with open(self.path, "w", newline="") as handle:
            if self.columns:
                writer = csv.DictWriter(handle, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: f"{v:.9g}" for k, v in values.items()}}
        if self.columns is None or set(row) - set(self.columns):
            old = []
            if self.columns and self.path.is_file():
                with open(self.path, newline="") as handle:
                    old = list(csv.DictReader(handle))
            self.columns = list(dict.fromkeys([*(self.columns or []), *row]))
            self._rewrite(old)
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, restval="").writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
