"""Progress on the console: a tqdm bar on a terminal, else one line every `train.log_every` steps (with
`train.progress=false`, or when the output is redirected: tqdm's own check for a non-terminal), so a log
file shows the run moving without a bar redrawn into it."""

from __future__ import annotations

import datetime
import time

from tqdm import tqdm

# Logged as their value at the logged step; every other term is the mean over the steps since the last log.
AT_STEP = frozenset({"lr", "momentum", "teacher_temp", "weight_decay", "skipped_samples"})


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """The per-step values since the last log (one dict a step) -> the logged row: per key, the mean over
    the steps that have it, and the last value of schedules."""
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return {key: values[-1] if key in AT_STEP else sum(values) / len(values) for key, values in columns.items()}


class Progress:
    def __init__(self, total: int, initial: int, enabled: bool, is_main: bool) -> None:
        self.total, self.initial, self.start = total, initial, time.perf_counter()
        self.bar = tqdm(
            total=total, initial=initial, disable=None if enabled and is_main else True, dynamic_ncols=True
        )
        self.lines = is_main and self.bar.disable

    def update(self) -> None:
        self.bar.update(1)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.bar.disable:
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_s']:.0f}"
            )
        elif self.lines:
            print(self.line(step, values), flush=True)

    def line(self, step: int, values: dict[str, float]) -> str:
        elapsed = time.perf_counter() - self.start
        done = step - self.initial
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        parts = [f"step {step}/{self.total}", f"loss {values['loss']:.4f}", f"lr {values['lr']:.2e}"]
        parts += [f"img/s {values['images_per_s']:.0f}", f"eta {datetime.timedelta(seconds=round(eta))}"]
        return "  ".join(parts)

    def write(self, text: str) -> None:
        if self.lines or not self.bar.disable:
            tqdm.write(text)

    def close(self) -> None:
        self.bar.close()
