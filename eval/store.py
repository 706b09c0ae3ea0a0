"""Where features come from: the backbone (loaded once), split sources, and an on-disk cache.

A backbone is a module, a path (checkpoint, export file, timm export folder or run directory), a timm
name with a weights file, `pixels` (the raw-pixel baseline), or any of those with `model.weights=none`
(`--random-init`): a random init of that architecture, seeded by `model.seed`. A timm name without weights
is refused rather than silently evaluated with random weights.

The cache key holds everything the features depend on: the backbone (file content hash; or timm name,
sizes, init seed and weights hash; or a module's weights hash), the data (name, root, split, limit,
options, and a hash of the (path, size, mtime, label) list of every file the split reads, so a moved,
relabelled, added or rewritten file is a miss), the adapter (transform) and the pooling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset, Subset

from eval.baselines import PIXELS, RawPixels
from eval.config import RANDOM_WEIGHTS
from eval.extract import Adapter, Features, adapter_for, extract_features
from eval.multiview import REPRESENTATIONS, extract_representation, multiview_adapter
from eval.slices import load_joined
from ssl_distill.backbones import build_backbone, load_backbone
from ssl_distill.backbones.export import read_preprocess
from ssl_distill.checkpoints import resolve_run_path
from ssl_distill.data import build_source, seeded_call
from ssl_distill.data.bundled import cache_dir
from ssl_distill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl_distill.files import atomic_path
from ssl_distill.registry import DATASETS, closest
from ssl_distill.runtime import cpu_threads, resolve_device

CACHE_VERSION = 2
FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, memoised per (path, size, mtime) within the process."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def module_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_file_source(source: str | Path) -> bool:
    """A backbone given by path: a checkpoint or export file, a timm export folder or a run directory."""
    return Path(str(source)).suffix in FILE_SUFFIXES or Path(str(source)).is_dir()


def random_init(model: DictConfig) -> bool:
    """`model.weights=none` (`--random-init`): random weights, seeded by `model.seed`."""
    return model.weights is not None and str(model.weights).lower() in RANDOM_WEIGHTS


def _path_identity(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        hashes = [file_sha256(path / name) for name in ("config.json", "model.safetensors")]
        return {"folder": str(path.resolve()), "sha256": hashes}
    if path.is_dir():
        path = resolve_run_path(path)
    return {"file": str(path.resolve()), "sha256": file_sha256(path)}


def _sizes(model: DictConfig) -> dict[str, Any]:
    names = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
    return {name: model[name] for name in names if model[name] is not None}


def backbone_identity(source: str | Path | nn.Module, model: DictConfig) -> dict[str, Any]:
    """What the backbone's outputs depend on, for the cache key."""
    if isinstance(source, nn.Module):
        return {"module": module_sha256(source)}
    if is_file_source(source):
        if random_init(model):  # the architecture only: any file of the same spec gives the same init
            return {"random_init": load_backbone(source).spec, "seed": model.seed}
        return _path_identity(source)
    name = str(source).removeprefix("timm:")
    if name == PIXELS:
        return {"baseline": PIXELS, "sizes": RawPixels.sizes(model)}
    weights = None if model.weights is None or random_init(model) else file_sha256(model.weights)
    return {"timm": name, "sizes": _sizes(model), "seed": model.seed, "weights": weights}


def open_backbone(source: str | Path | nn.Module, model: DictConfig) -> nn.Module:
    """A module as is; a path by its own spec (random weights of that spec with `model.weights=none`); a timm
    name with sizes and a weights file, or a seeded random init; `pixels`, the raw-pixel baseline."""
    if isinstance(source, nn.Module):
        return source
    if is_file_source(source):
        if random_init(model):
            spec = load_backbone(source).spec
            return seeded_call(model.seed, lambda: build_backbone(spec))
        return load_backbone(source)
    name = str(source).removeprefix("timm:")
    if name == PIXELS:
        return RawPixels(**RawPixels.sizes(model))
    if not timm.is_model(name):
        raise ValueError(
            f"backbone '{source}' is neither a path (checkpoint, export, run directory) nor a timm model"
            f"{closest(name, timm.list_models())}"
        )
    if model.weights is None:
        raise ValueError(
            f"backbone '{name}' is a timm name and no weights were given (nothing is downloaded): pass "
            "model.weights=<file> for its weights, or --random-init (model.weights=none) for a random-init baseline"
        )
    weights = None if random_init(model) else model.weights
    return seeded_call(model.seed, lambda: load_backbone(name, weights=weights, **_sizes(model)))


def file_list(source: Dataset) -> list[list[Any]] | None:
    """[path, size, mtime_ns, label, ...] of every file a split reads, in order (through `limit` subsets);
    None for data generated or held in memory (bundled MNIST, shapes), which the name and options fix."""
    indices = None
    while isinstance(source, Subset):
        chosen = list(source.indices)
        indices = chosen if indices is None else [chosen[i] for i in indices]
        source = source.dataset
    if getattr(source, "files", None) is not None:
        rows = [[path, label] for path, label in zip(source.files, source.labels)]
    elif getattr(source, "entries", None) is not None:
        rows = [[e.path, e.label, e.ef, *([] if e.masks is None else _stat(e.masks))] for e in source.entries]
    else:
        return None
    rows = rows if indices is None else [rows[i] for i in indices]
    return [[*_stat(row[0]), *row[1:]] for row in rows]


def _stat(path: str | Path) -> list[Any]:
    try:
        stat = Path(path).stat()
        return [str(path), stat.st_size, stat.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


class FeatureCache:
    """Features stored as `<root>/<key digest>.pt`, written atomically; the full key is kept inside."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / f"{_digest(key)}.pt"

    def folder(self, key: dict[str, Any]) -> Path:
        """Where sharded slices of `key` and their joined set live (eval/slices.py)."""
        return self.root / _digest(key)

    def load(self, key: dict[str, Any]) -> Features | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:  # memory-mapped: a large bank is read page by page as it is used
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # a damaged file is a miss; it gets rewritten
            return None
        if state.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        state["grid"], state["classes"] = tuple(state["grid"]), tuple(state["classes"])
        return Features(**{f.name: state[f.name] for f in fields(Features)})

    def save(self, key: dict[str, Any], features: Features) -> Path:
        path = self.path(key)
        state = {f.name: getattr(features, f.name) for f in fields(Features)}
        state["grid"], state["classes"] = list(features.grid), list(features.classes)
        state["key"] = json.loads(json.dumps(key, default=str))
        with atomic_path(path, fsync=False) as tmp:
            torch.save(state, tmp)
        return path


class FeatureStore:
    """One backbone and one dataset: builds split sources and serves their (cached) features."""

    def __init__(self, backbone: str | Path | nn.Module, cfg: DictConfig) -> None:
        self.source_ref, self.cfg = backbone, cfg
        self.device = resolve_device(cfg.run.device)
        self.cache = FeatureCache(cfg.run.cache_dir or cache_dir() / "eval")
        self.used: dict[str, str] = {}  # "split/pooling" -> cache file
        self.sizes: dict[str, int] = {}  # split -> samples
        self.warnings: list[str] = []
        self._backbone: nn.Module | None = None
        self._identity: dict[str, Any] | None = None
        self._sources: dict[str, Dataset] = {}
        self._options: dict[str, Any] | None = None
        self._files: dict[str, str | None] = {}
        self._classes: tuple[str, ...] | None = None  # one class list for every split served

    def say(self, message: str) -> None:
        print(f"ssl-eval: {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """A result that may mislead: printed now and recorded in the result JSON."""
        if message not in self.warnings:
            self.warnings.append(message)
            self.say(f"warning: {message}")

    @cached_property
    def normalization(self) -> tuple[list[float], list[float]]:
        """data.mean/std when given, else the training normalisation recorded with the backbone, else ImageNet's."""
        data = self.cfg.data
        recorded = None
        if (data.mean is None or data.std is None) and not isinstance(self.source_ref, nn.Module):
            recorded = read_preprocess(self.source_ref) if is_file_source(self.source_ref) else None
        recorded = recorded or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        mean = list(data.mean) if data.mean is not None else list(recorded["mean"])
        std = list(data.std) if data.std is not None else list(recorded["std"])
        return mean, std

    @property
    def data_options(self) -> dict[str, Any]:
        """The dataset options in effect: those given, over the clip shape (`num_frames`, `img_size`) and
        normalisation the backbone was trained with, for datasets that take them (video clips)."""
        if self._options is None:
            data = self.cfg.data
            given = OmegaConf.to_container(data.options, resolve=True)
            known = {f.name for f in dataclasses.fields(DATASETS.get(data.name).Config)}
            spec = dict(getattr(self.backbone, "spec", {}))
            mean, std = self.normalization
            derived = {"num_frames": spec.get("num_frames"), "img_size": spec.get("img_size"), "mean": mean}
            derived = {**derived, "std": std}
            derived = {k: v for k, v in derived.items() if k in known and k not in given and v is not None}
            shape = {k: derived[k] for k in ("num_frames", "img_size") if k in derived}
            if shape:
                self.say(f"data.options {shape} from the backbone's spec (set data.options.* to change)")
            self._options = {**derived, **given}
        return self._options

    @property
    def backbone(self) -> nn.Module:
        if self._backbone is None:
            self._backbone = open_backbone(self.source_ref, self.cfg.model)
        return self._backbone

    @property
    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = backbone_identity(self.source_ref, self.cfg.model)
        return self._identity

    def source(self, split: str) -> Dataset:
        if split not in self._sources:
            data = self.cfg.data
            self._sources[split] = build_source(data.name, data.root, split, data.limit, **self.data_options)
        return self._sources[split]

    def files_digest(self, split: str) -> str | None:
        """Hash of the split's (path, size, mtime, label) list; None for generated or bundled data."""
        if split not in self._files:
            listed = file_list(self.source(split))
            self._files[split] = None if listed is None else _digest(listed)
        return self._files[split]

    def classes(self, split: str) -> tuple[str, ...]:
        return tuple(getattr(self.source(split), "classes", ()))

    def key(self, split: str, adapter: Adapter, pooling: str) -> dict[str, Any]:
        data = self.cfg.data
        key = {
            "version": CACHE_VERSION,
            "backbone": self.identity,
            "data": {
                "name": data.name,
                "root": data.root,
                "files": self.files_digest(split),
                "split": split,
                "limit": data.limit,
                "options": self.data_options,
            },
            "adapter": getattr(adapter, "key", repr(adapter)),
            "pooling": pooling,
        }
        content = getattr(self.source(split), "fingerprint", None)  # shards: their names, counts and hashes
        if content is not None:
            key["data"]["content"] = content
        return key

    def adapted_key(self, split: str, pooling: str) -> tuple[Adapter, dict[str, Any]]:
        """The adapter for a split's items and the cache key of its features."""
        data = self.cfg.data
        img_size = data.img_size or self.backbone.spec.get("img_size")
        source = self.source(split)
        adapter = multiview_adapter(source) or adapter_for(source, img_size, *self.normalization)
        if pooling not in REPRESENTATIONS and adapter.key["kind"] == "multiview":
            raise ValueError(f"dataset '{data.name}' has aligned views: set pooling to a named representation {REPRESENTATIONS}")
        return adapter, self.key(split, adapter, pooling)

    def extract(self, split: str, adapter: Adapter, pooling: str, source: Dataset | None = None) -> Features:
        """Features of a split (or of `source`, a part of it), computed now."""
        data = self.cfg.data
        extract = extract_representation if pooling in REPRESENTATIONS else extract_features
        with cpu_threads(self.cfg.run.threads):
            return extract(
                self.backbone,
                self.source(split) if source is None else source,
                adapter,
                pooling=pooling,
                batch_size=data.batch_size,
                num_workers=data.num_workers,
                device=self.device,
                classes=self.classes(split),
                progress=self.cfg.run.progress,
                desc=f"features {data.name}/{split}",
            )

    def features(self, split: str, pooling: str = "cls") -> Features:
        """Features of a split: a joined set of sharded slices (memory-mapped) or the cache when the key
        matches, else extracted (and cached)."""
        adapter, key = self.adapted_key(split, pooling)
        size = len(self.source(split))
        self.sizes[split] = size
        self._check_size(split, size)
        name = self.cfg.data.name
        if self.cfg.run.cache and (joined := load_joined(self.cache.folder(key), key)) is not None:
            self.used[f"{split}/{pooling}"] = str(self.cache.folder(key))
            self.say(f"features {name}/{split} ({pooling}, {len(joined)} samples): joined slices")
            return self._aligned(joined)
        if self.cfg.run.cache and (cached := self.cache.load(key)) is not None:
            self.used[f"{split}/{pooling}"] = str(self.cache.path(key))
            hit = self.cache.path(key).stem
            self.say(f"features {name}/{split} ({pooling}, {len(cached)} samples): cache hit ({hit})")
            return self._aligned(cached)
        features = self.extract(split, adapter, pooling)
        if self.cfg.run.cache:
            self.used[f"{split}/{pooling}"] = str(self.cache.save(key, features))
        return self._aligned(features)

    def _aligned(self, features: Features) -> Features:
        """Labels of every split in one class list, matched by class name: a split that lacks a class (or
        a dataset that numbers each split's classes on its own) must not shift the labels of the others."""
        if not features.classes:
            return features
        if self._classes is None or features.classes == self._classes:
            self._classes = self._classes or features.classes
            return features
        names = [*self._classes, *(c for c in features.classes if c not in self._classes)]
        mapping = torch.tensor([names.index(c) for c in features.classes], dtype=torch.int64)
        labels = torch.where(features.labels >= 0, mapping[features.labels.clamp_min(0)], features.labels)
        self._classes = tuple(names)
        return dataclasses.replace(features, labels=labels, classes=self._classes)

    def _check_size(self, split: str, size: int) -> None:
        if size < self.cfg.run.small_split:
            self.warn(
                f"split '{split}' of {self.cfg.data.name} has only {size} samples: a rate measured on it has a "
                f"standard error up to {0.5 / math.sqrt(max(size, 1)):.2f}"
            )
