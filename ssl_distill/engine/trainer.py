"""One trainer for every objective: AdamW with per-iteration schedules, autocast, clipping, logging,
atomic checkpoints and exact resume. It knows objectives only through their contract.

A step makes no host sync of its own (fp16's GradScaler and, under DDP, the stop-signal check
still make one): the loss and the logged scalars stay on the device and are read every `log_every`
steps, before every checkpoint and at the end of `fit`, which is where a non-finite loss is caught
(see `NonFiniteLossError`). One DataLoader serves a whole `fit`, so its workers live as long as the
run.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset

from ssl_distill import checkpoints as ckpt
from ssl_distill.backbones import backbone_weights, export_backbone
from ssl_distill.backbones.export import export_run
from ssl_distill.config import config_changes, from_yaml, objective_class, to_yaml
from ssl_distill.data import (
    ResumableSampler,
    ShardSource,
    ViewDataset,
    build_loader,
    build_source,
    build_transform,
    seeded_call,
)
from ssl_distill.engine import run_record
from ssl_distill.engine.distributed import DistEnv, any_rank, barrier, gather_objects
from ssl_distill.engine.logger import MetricsLogger
from ssl_distill.engine.monitor import Monitor
from ssl_distill.engine.progress import Progress, summarize
from ssl_distill.engine.rundir import run_directory
from ssl_distill.errors import ConfigError, RunError
from ssl_distill.files import write_text_atomic
from ssl_distill.objectives import Objective
from ssl_distill.runtime import resolve_device
from ssl_distill.schedules import warmup_cosine


class NonFiniteLossError(RunError):
    """The loss became NaN or infinite at some step.

    Losses are checked where they are read from the device: every `log_every` steps, before every
    checkpoint and at the end of `fit`. So, precisely:
    - no checkpoint, hence no resume and no export, ever holds state that a non-finite loss has
      touched: a save first reads and checks every step since the last read;
    - the run stops at the first read after the bad step (at most `log_every` - 1 steps later), with
      this error naming that step, its loss and logged terms, and the last good checkpoint, which is
      left as it was (under DDP every rank stops at that read);
    - the optimizer steps from the bad one up to that read have been applied in memory: after the
      error the trainer's model is not a good state; rerunning resumes from the last good checkpoint.
    With `log_every=1` a bad step is caught right after its own update.
    """


class Preempted(RuntimeError):
    """A stop was requested (preemption or time-limit signal); a checkpoint was written at `step`."""

    def __init__(self, step: int, checkpoint: Path | None, seconds: float) -> None:
        super().__init__(f"stopped at step {step}: checkpoint {checkpoint} written {seconds:.2f} s after the signal")
        self.step, self.checkpoint, self.seconds = step, checkpoint, seconds


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    exported: Path | None
    losses: list[float] = field(default_factory=list)  # per step run in this call
    start_step: int = 0
    steps: int = 0


def build_dataset(cfg: DictConfig, dist_env: DistEnv | None = None) -> Any:
    """The training dataset: an image source wrapped with its view transform, a dataset that already
    yields batch dicts (video), or a stream of this rank's batches (shards). Each states the batch keys
    it `provides`."""
    source = build_source(cfg.data.name, cfg.data.root, cfg.data.split, cfg.data.limit, **cfg.data.options)
    if isinstance(source, ShardSource):
        dist_env = dist_env or DistEnv()
        transform = build_transform(cfg.data.transform) if source.kind == "image" else None
        return source.stream(
            transform, cfg.data.batch_size, cfg.run.seed, dist_env.rank, dist_env.world_size, cfg.data.num_workers
        )
    if hasattr(source, "provides"):
        return source
    return ViewDataset(source, build_transform(cfg.data.transform))


def adamw(param_groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one (CPU, CUDA): one kernel over all tensors
    instead of a python loop, the same update to float rounding; torch's default elsewhere."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=fused)


def build_val_loader(cfg: DictConfig) -> DataLoader | None:
    """The validation split (`data.val_split`) with the deterministic eval transform (resize + centre crop to
    `model.img_size`, the training transform's normalisation), in order; None without a split."""
    if not cfg.data.val_split:
        return None
    source = build_source(cfg.data.name, cfg.data.root, cfg.data.val_split, cfg.data.val_limit, **cfg.data.options)
    if hasattr(source, "provides"):
        raise ConfigError(f"data.val_split: dataset '{cfg.data.name}' is not an image source; validation reads images")
    view = cfg.data.transform
    spec = {"name": "eval", "img_size": cfg.model.img_size, **{k: view[k] for k in ("mean", "std") if k in view}}
    dataset = ViewDataset(source, build_transform(OmegaConf.create(spec)))
    return DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


class Trainer:
    """`Trainer(cfg).fit()` trains `cfg.objective` on `cfg.data` into `run.out_dir/run.name`."""

    def __init__(self, cfg: DictConfig, dist_env: DistEnv | None = None) -> None:
        dist_env = dist_env or DistEnv()
        self.cfg, self.rank, self.world_size = cfg, dist_env.rank, dist_env.world_size
        self.is_main = dist_env.is_main
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.device = resolve_device(cfg.train.device, dist_env.local_rank)
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")

        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        self.dataset = build_dataset(cfg, dist_env)
        objective_cls = objective_class(cfg.objective)
        missing = set(objective_cls.requires) - set(self.dataset.provides)
        if missing:
            raise ConfigError(
                f"objective '{cfg.objective.name}' needs batch keys {sorted(missing)} that dataset "
                f"'{cfg.data.name}' does not provide (it gives {sorted(self.dataset.provides)})"
            )
        if isinstance(self.dataset, IterableDataset):  # a stream orders, splits and batches itself (data/shards.py)
            self.sampler = self.dataset
        else:
            self.sampler = ResumableSampler(
                len(self.dataset), cfg.data.batch_size, cfg.run.seed, rank=self.rank, world_size=self.world_size,
                endless=True,
            )
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.val_loader = build_val_loader(cfg)
        self.max_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch

        self.objective: Objective = objective_cls(cfg, self.max_steps).to(self.device)
        self.model: torch.nn.Module = self.objective
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.objective, device_ids=device_ids)
        torch.manual_seed(cfg.run.seed + self.rank)  # identical weights, per-rank masks and dropout
        o = cfg.optim
        global_batch = cfg.data.batch_size * self.world_size
        self.lr = o.lr if o.lr is not None else o.base_lr * global_batch / 256
        warmup = int(o.warmup_fraction * self.max_steps)
        self.lr_schedule = warmup_cosine(self.lr, o.min_lr, self.max_steps, warmup)
        wd_end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
        self.wd_schedule = warmup_cosine(o.weight_decay, wd_end, self.max_steps)
        self.optimizer = adamw(self.objective.param_groups(o.weight_decay), self.lr, tuple(o.betas), self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        self.step = 0
        self.stop_requested_at: float | None = None
        self.stop_signals: tuple[int, ...] = ()
        self.saved_step: int | None = None
        self.skipped_samples = 0
        self.unread: list[tuple[int, dict[str, torch.Tensor | float]]] = []  # (step, logs) still on the device
        self.read: list[dict[str, float]] = []  # logs of read steps, not yet taken by `fit`
        self.monitor = Monitor(cfg, self.device) if cfg.monitor.every and self.is_main else None

    # -- state ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": gather_objects(ckpt.rng_state()),  # one entry per rank
            "config": to_yaml(self.cfg),
            "backbone": backbone_weights(self.objective.backbone),  # shares storage with "model"
            "backbone_spec": self.objective.backbone.spec,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state["model"])
        saved = state["optimizer"]  # its groups carry the writer's implementation flags: keep ours
        ours = {key: self.optimizer.defaults[key] for key in ("fused", "foreach")}
        self.optimizer.load_state_dict({**saved, "param_groups": [group | ours for group in saved["param_groups"]]})
        self.scaler.load_state_dict(state["scaler"])
        states = state["rng"]
        ckpt.set_rng_state(states[min(self.rank, len(states) - 1)])
        self.step = int(state["step"])
        self.saved_step = self.step

    def save_checkpoint(self) -> Path | None:
        """Collective: every rank calls it; rank 0 writes. The unread steps are read and checked first,
        so state touched by a non-finite loss raises NonFiniteLossError instead of being saved. A write
        that fails (a full disk) leaves no partial file and stops the run with RunError naming the intact
        previous checkpoint."""
        self._read_steps()
        state = self.state()
        path = None
        if self.is_main:
            target = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
            try:
                path = ckpt.save_atomic(state, target)
            except OSError as error:
                previous = ckpt.list_checkpoints(self.checkpoint_dir)
                intact = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
                what = "no space left" if error.errno in (errno.ENOSPC, errno.EDQUOT) else f"{error.strerror or error}"
                raise RunError(
                    f"{what} on {self.checkpoint_dir} while writing checkpoint {self.step}; {intact} "
                    "(free space and run the same command to resume)"
                ) from None
            ckpt.prune(self.checkpoint_dir, self.cfg.train.keep_checkpoints)
        barrier()
        self.saved_step = self.step
        return path

    def request_stop(self) -> None:
        """Ask the loop to finish the current step, write a checkpoint and raise Preempted (signal-safe)."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.perf_counter()

    @contextlib.contextmanager
    def stop_on_signals(self, *signums: int) -> Iterator[None]:
        """While active, the given signals request a checkpointed stop instead of killing the run; a second
        SIGINT (Ctrl-C twice) interrupts at once."""

        def handler(signum: int, frame: object) -> None:
            if signum == signal.SIGINT and self.stop_requested_at is not None:
                raise KeyboardInterrupt
            self.request_stop()

        previous = {s: signal.signal(s, handler) for s in signums}
        self.stop_signals = signums  # recorded in the run's lock for `ssl-distill signal RUN`
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop_signals = ()

    def maybe_resume(self) -> Path | None:
        if not self.cfg.train.resume:
            return None
        found = ckpt.load_latest(self.checkpoint_dir)
        if found is None:
            return None
        path, state = found
        old = from_yaml(state["config"])
        run_record.check_schedule_length(old, self.cfg, self.steps_per_epoch, path)
        changed = config_changes(old, self.cfg)
        if changed and self.is_main:
            warnings.warn(f"resuming {path} with a changed config: {'; '.join(changed)}", stacklevel=2)
            run_record.archive_config(self.run_dir, int(state["step"]))
        self.load_state(state)
        return path

    # -- loop ----------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.cfg.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _set_schedules(self, step: int) -> float:
        lr = float(self.lr_schedule[step])
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # layer-wise decay (fine-tuning), CoTAP's backbone
            if group.get("apply_wd_schedule"):
                group["weight_decay"] = float(self.wd_schedule[step])
        return lr

    def train_step(self, batch: dict[str, Any]) -> None:
        """One optimizer step at self.step; its loss and logged scalars join `unread`, tensors left on
        the device (no host sync)."""
        lr = self._set_schedules(self.step)
        self.objective.train()
        with self._autocast():
            output = self.model(_to_device(batch, self.device), self.step)
        loss = output.loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        logs: dict[str, torch.Tensor | float] = {"loss": loss.detach(), "lr": lr}
        logs |= {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in output.logs.items()}
        if "skipped" in batch:  # unreadable videos the dataset passed over for this batch (a CPU tensor)
            self.skipped_samples += int(batch["skipped"].sum())
            logs["skipped_samples"] = self.skipped_samples
        if self.cfg.optim.clip_grad:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step(self.step)
        self.unread.append((self.step, logs))
        self.step += 1

    def _read_steps(self) -> None:
        """Read the unread steps' scalars from the device in one host sync into `read`, checking each
        loss; a non-finite one raises NonFiniteLossError (on every rank under DDP)."""
        tensors = [v for _, logs in self.unread for v in logs.values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.float().reshape(()).to(self.device) for t in tensors]).tolist() if tensors else [])
        rows = [
            {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in logs.items()}
            for _, logs in self.unread
        ]
        bad = next(((step, row) for (step, _), row in zip(self.unread, rows) if not math.isfinite(row["loss"])), None)
        if any_rank(bad is not None, self.device):
            if bad is None:
                what = f"a non-finite loss on another rank by step {self.step - 1}"
            else:
                step, row = bad
                terms = {k: v for k, v in row.items() if k not in ("loss", "lr")}
                what = f"loss is {row['loss']} at step {step} (terms: {terms})"
            newest = ckpt.list_checkpoints(self.checkpoint_dir)
            raise NonFiniteLossError(f"{what}; stopping. Last good checkpoint: {newest[-1] if newest else 'none yet'}")
        self.unread = []
        self.read += rows

    def _take_read(self) -> list[dict[str, float]]:
        """The logs of every step since the last call, read from the device (`_read_steps`)."""
        self._read_steps()
        rows, self.read = self.read, []
        return rows

    def validate(self) -> dict[str, float]:
        """`Objective.validate` over the validation split, on rank 0 (the others wait), with every RNG state
        left as it was so that training continues exactly as in a run that validated at other steps."""
        metrics: dict[str, float] = {}
        if self.is_main and self.val_loader is not None:

            def run() -> dict[str, float]:  # iter(loader) draws a seed: inside, where the RNGs are forked
                batches = (_to_device(batch, self.device) for batch in self.val_loader)
                with self._autocast():
                    return self.objective.validate(batches)

            metrics = seeded_call(self.cfg.run.seed, run)
        barrier()
        return metrics

    def _validates_now(self) -> bool:
        every = self.cfg.train.eval_every
        return self.val_loader is not None and (self.step == self.max_steps or (every > 0 and self.step % every == 0))

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Batches from self.step on, epoch after epoch, with the data order of an uninterrupted run:
        one loader over the endless sampler, whose workers live until this generator is closed. Closing
        it (or an error in the loader) shuts the workers down at once: they ignore the stop signals, so
        they must not be left for interpreter exit to terminate."""
        epoch, start = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch, start)
        while True:  # once over the endless sampler; a stream (shards) is read an epoch at a time
            iterator = iter(build_loader(self.dataset, self.sampler, self.cfg.data.num_workers, self.device.type == "cuda"))
            try:
                yield from iterator
            finally:
                shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's multi-worker iterator
                if shutdown is not None:
                    shutdown()
            epoch += 1
            self.sampler.set_epoch(epoch, 0)

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train to max_steps (or to `stop_at`, saving a checkpoint there, as a preempted job would).

        The run directory is locked for the duration (a second run on it stops with RunError)."""
        with run_directory(self.run_dir, self.is_main, self.stop_signals):
            return self._fit(stop_at)

    def _fit(self, stop_at: int | None) -> TrainResult:
        cfg = self.cfg
        last_step = self.max_steps if stop_at is None else min(stop_at, self.max_steps)
        resumed = self.maybe_resume()
        if self.is_main:
            write_text_atomic(self.run_dir / "config.yaml", to_yaml(cfg))
        logger = MetricsLogger(self.run_dir, self.step, cfg.train.tensorboard, enabled=self.is_main)
        result = TrainResult(self.run_dir, resumed, None, start_step=self.step)
        progress = Progress(self.max_steps, self.step, cfg.train.progress, self.is_main)
        if resumed:
            progress.write(f"resumed from {resumed} at step {self.step}")
        if self.monitor is not None and self.step == 0:  # the random-init reference in the same log
            checked = self.monitor(self.objective.backbone)
            logger.log(0, checked)
            progress.write(self.monitor.describe(0, checked))
        images_per_step = cfg.data.batch_size * self.world_size
        self.unread, self.read = [], []
        tic = session_start = time.perf_counter()
        try:
            with contextlib.closing(self._batches()) as batches:
                while self.step < last_step:
                    self.train_step(next(batches))
                    progress.update()
                    validation: dict[str, float] = {}
                    if self._validates_now():
                        started = time.perf_counter()
                        validation = self.validate()
                        tic += time.perf_counter() - started  # throughput counts training time only
                        progress.write(f"step {self.step}: " + "  ".join(f"{k} {v:.4g}" for k, v in validation.items()))
                    if self.step % cfg.train.log_every == 0 or self.step == self.max_steps:
                        window = self._take_read()
                        result.losses += [row["loss"] for row in window]
                        elapsed = time.perf_counter() - tic
                        means = summarize(window)  # loss terms averaged over the window, schedules at the step
                        means["images_per_s"] = images_per_step * len(window) / max(elapsed, 1e-9)
                        means["epoch"] = self.step / self.steps_per_epoch
                        if self.monitor is not None and (self.monitor.due(self.step) or self.step == self.max_steps):
                            checked = self.monitor(self.objective.backbone)
                            means.update(checked)
                            progress.write(self.monitor.describe(self.step, checked))
                        logger.log(self.step, {**means, **validation})  # validation joins the step's row
                        progress.log(self.step, means)
                        tic = time.perf_counter()
                    elif validation:
                        logger.log(self.step, validation)
                    if any_rank(self.stop_requested_at is not None, self.device):
                        self.request_stop()  # ranks that got no signal stop too
                        path = self.save_checkpoint()
                        raise Preempted(self.step, path, time.perf_counter() - self.stop_requested_at)
                    if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0 and self.step < self.max_steps:
                        self.save_checkpoint()
            result.losses += [row["loss"] for row in self._take_read()]
        finally:
            progress.close()
            logger.close()
            if self.is_main and self.step > result.start_step:
                seconds = time.perf_counter() - session_start
                images = (self.step - result.start_step) * images_per_step
                run_record.record_session(
                    self.run_dir, result.start_step, self.step, seconds, images, device=str(self.device), world_size=self.world_size
                )
        result.steps = self.step
        if self.saved_step != self.step:
            self.save_checkpoint()
        result.checkpoint = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        if self.is_main and self.step == self.max_steps:
            result.exported = export_run(self.objective.backbone, self.run_dir, cfg)
            for name, module in self.objective.extra_exports().items():
                export_backbone(module, self.run_dir / name)
        return result


def train(cfg: DictConfig, stop_at: int | None = None) -> TrainResult:
    return Trainer(cfg).fit(stop_at)
