"""One trainer for every objective: AdamW with per-iteration schedules, autocast, clipping, logging,
atomic checkpoints and exact resume. It knows objectives only through their contract."""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from ssl_distill import checkpoints as ckpt
from ssl_distill.backbones import backbone_weights, export_backbone
from ssl_distill.config import config_changes, from_yaml, to_yaml
from ssl_distill.data import ResumableSampler, ViewDataset, build_loader, build_source, build_transform
from ssl_distill.engine.distributed import DistEnv, any_rank, barrier, gather_objects
from ssl_distill.engine.logger import MetricsLogger
from ssl_distill.errors import ConfigError
from ssl_distill.files import write_text_atomic
from ssl_distill.objectives import Objective
from ssl_distill.registry import OBJECTIVES
from ssl_distill.runtime import resolve_device
from ssl_distill.schedules import warmup_cosine


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


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


def build_dataset(cfg: DictConfig) -> Any:
    """The training dataset: an image source wrapped with its view transform, or a dataset that
    already yields batch dicts (video). Each states the batch keys it `provides`."""
    source = build_source(cfg.data.name, cfg.data.root, cfg.data.split, cfg.data.limit, **cfg.data.options)
    if hasattr(source, "provides"):
        return source
    return ViewDataset(source, build_transform(cfg.data.transform))


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
        self.dataset = build_dataset(cfg)
        objective_cls = OBJECTIVES.get(cfg.objective.name)
        missing = set(objective_cls.requires) - set(self.dataset.provides)
        if missing:
            raise ConfigError(
                f"objective '{cfg.objective.name}' needs batch keys {sorted(missing)} that dataset "
                f"'{cfg.data.name}' does not provide (it gives {sorted(self.dataset.provides)})"
            )
        self.sampler = ResumableSampler(
            len(self.dataset), cfg.data.batch_size, cfg.run.seed, rank=self.rank, world_size=self.world_size
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch
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
        self.optimizer = torch.optim.AdamW(self.objective.param_groups(o.weight_decay), lr=self.lr, betas=tuple(o.betas))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        self.step = 0
        self.stop_requested_at: float | None = None
        self.saved_step: int | None = None
        self.skipped_samples = 0

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
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        states = state["rng"]
        ckpt.set_rng_state(states[min(self.rank, len(states) - 1)])
        self.step = int(state["step"])
        self.saved_step = self.step

    def save_checkpoint(self) -> Path | None:
        """Collective: every rank calls it; rank 0 writes."""
        state = self.state()
        path = None
        if self.is_main:
            path = ckpt.save_atomic(state, ckpt.checkpoint_path(self.checkpoint_dir, self.step))
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
        """While active, the given signals request a checkpointed stop instead of killing the run."""
        previous = {s: signal.signal(s, lambda *_: self.request_stop()) for s in signums}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def maybe_resume(self) -> Path | None:
        if not self.cfg.train.resume:
            return None
        found = ckpt.load_latest(self.checkpoint_dir)
        if found is None:
            return None
        path, state = found
        changed = config_changes(from_yaml(state["config"]), self.cfg)
        if changed and self.is_main:
            warnings.warn(f"resuming {path} with a changed config: {'; '.join(changed)}", stacklevel=2)
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
            group["lr"] = lr * group.get("lr_scale", 1.0)  # an objective may scale a group (CoTAP's backbone)
            if group.get("apply_wd_schedule"):
                group["weight_decay"] = float(self.wd_schedule[step])
        return lr

    def train_step(self, batch: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """One optimizer step at self.step; returns the loss and the logged scalars."""
        lr = self._set_schedules(self.step)
        self.objective.train()
        with self._autocast():
            output = self.model(_to_device(batch, self.device), self.step)
        loss = output.loss
        if not torch.isfinite(loss.detach()):
            terms = {k: float(v) for k, v in output.logs.items()}
            newest = ckpt.list_checkpoints(self.checkpoint_dir)
            raise NonFiniteLossError(
                f"loss is {float(loss.detach())} at step {self.step} (terms: {terms}); stopping. "
                f"Last good checkpoint: {newest[-1] if newest else 'none yet'}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        logs = {k: float(v) for k, v in output.logs.items()}
        if "skipped" in batch:  # unreadable videos the dataset passed over for this batch
            self.skipped_samples += int(batch["skipped"].sum())
            logs["skipped_samples"] = self.skipped_samples
        if self.cfg.optim.clip_grad:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step(self.step)
        self.step += 1
        return float(loss.detach()), {"loss": float(loss.detach()), "lr": lr, **logs}

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Batches from self.step on, epoch after epoch, with the data order of an uninterrupted run."""
        generator = torch.Generator()  # the loader draws its worker seed here, not from the global RNG
        while True:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, start)
            loader = build_loader(self.dataset, self.sampler, self.cfg.data.num_workers, self.device.type == "cuda")
            loader.generator = generator
            yield from loader

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train to max_steps (or to `stop_at`, saving a checkpoint there, as a preempted job would)."""
        cfg = self.cfg
        last_step = self.max_steps if stop_at is None else min(stop_at, self.max_steps)
        resumed = self.maybe_resume()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", to_yaml(cfg))
        logger = MetricsLogger(self.run_dir, self.step, cfg.train.tensorboard, enabled=self.is_main)
        result = TrainResult(self.run_dir, resumed, None, start_step=self.step)
        if resumed and self.is_main:
            tqdm.write(f"resumed from {resumed} at step {self.step}")
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not (cfg.train.progress and self.is_main), dynamic_ncols=True)
        window: dict[str, list[float]] = {}
        images_per_step = cfg.data.batch_size * self.world_size
        tic = time.perf_counter()
        try:
            batches = self._batches()
            while self.step < last_step:
                loss, logs = self.train_step(next(batches))
                result.losses.append(loss)
                for key, value in logs.items():
                    window.setdefault(key, []).append(value)
                bar.update(1)
                if self.step % cfg.train.log_every == 0 or self.step == self.max_steps:
                    elapsed = time.perf_counter() - tic
                    means = {k: sum(v) / len(v) for k, v in window.items()}
                    means["images_per_s"] = images_per_step * len(window["loss"]) / max(elapsed, 1e-9)
                    means["epoch"] = self.step / self.steps_per_epoch
                    logger.log(self.step, means)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{means['images_per_s']:.0f}")
                    window, tic = {}, time.perf_counter()
                if any_rank(self.stop_requested_at is not None, self.device):
                    self.request_stop()  # ranks that got no signal stop too
                    path = self.save_checkpoint()
                    raise Preempted(self.step, path, time.perf_counter() - self.stop_requested_at)
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0 and self.step < self.max_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            logger.close()
        result.steps = self.step
        if self.saved_step != self.step:
            self.save_checkpoint()
        result.checkpoint = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        if self.is_main and self.step == self.max_steps:
            result.exported = export_backbone(self.objective.backbone, self.run_dir / "backbone.safetensors")
        return result


def train(cfg: DictConfig, stop_at: int | None = None) -> TrainResult:
    return Trainer(cfg).fit(stop_at)
