"""Metrics to `metrics.csv` (one row per logged step) and TensorBoard, from rank 0 only."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLogger:
    """Appends rows; on resume, rows past the resumed step (written after the last checkpoint) are dropped
    so the log reads as one continuous run."""

    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.columns: list[str] | None = None
        self.writer = None
        if not enabled:
            return
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
