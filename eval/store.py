"""Where features come from: the backbone (loaded once), split sources, and an on-disk cache.

The cache key holds everything the features depend on: the backbone (file content hash; or timm name,
sizes, init seed and weights hash; or a module's weights hash), the data (name, root and its mtime,
split, limit, options), the adapter (transform) and the pooling.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from eval.features import Adapter, Features, adapter_for, extract_features
from eval.runtime import cpu_threads
from eval.slices import load_joined
from ssl_distill.backbones import load_backbone
from ssl_distill.data import seeded_call
from ssl_distill.data.bundled import cache_dir
from ssl_distill.registry import DATASETS, closest

CACHE_VERSION = 1
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
    return Path(str(source)).suffix in FILE_SUFFIXES


def _sizes(model: DictConfig) -> dict[str, Any]:
    names = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
    return {name: model[name] for name in names if model[name] is not None}


def backbone_identity(source: str | Path | nn.Module, model: DictConfig) -> dict[str, Any]:
    """What the backbone's outputs depend on, for the cache key."""
    if isinstance(source, nn.Module):
        return {"module": module_sha256(source)}
    if is_file_source(source):
        return {"file": str(Path(source).resolve()), "sha256": file_sha256(source)}
    weights = None if model.weights is None else file_sha256(model.weights)
    return {
        "timm": str(source).removeprefix("timm:"),
        "sizes": _sizes(model),
        "seed": model.seed,
        "weights": weights,
    }


def open_backbone(source: str | Path | nn.Module, model: DictConfig) -> nn.Module:
    """A module as is; a checkpoint or export by its own spec; a timm name with sizes, seeded init."""
    if isinstance(source, nn.Module):
        return source
    if is_file_source(source):
        return load_backbone(source)
    name = str(source).removeprefix("timm:")
    if not timm.is_model(name):
        raise ValueError(
            f"backbone '{source}' is neither a file ({', '.join(FILE_SUFFIXES)}) nor a timm model"
            f"{closest(name, timm.list_models())}"
        )
    return seeded_call(model.seed, lambda: load_backbone(str(source), weights=model.weights, **_sizes(model)))


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
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {f.name: getattr(features, f.name) for f in fields(Features)}
        state["grid"], state["classes"] = list(features.grid), list(features.classes)
        state["key"] = json.loads(json.dumps(key, default=str))
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class FeatureStore:
    """One backbone and one dataset: builds split sources and serves their (cached) features."""

    def __init__(self, backbone: str | Path | nn.Module, cfg: DictConfig) -> None:
        self.source_ref, self.cfg = backbone, cfg
        self.device = resolve_device(cfg.run.device)
        self.cache = FeatureCache(cfg.run.cache_dir or cache_dir() / "eval")
        self.used: dict[str, str] = {}  # "split/pooling" -> cache file
        self._backbone: nn.Module | None = None
        self._identity: dict[str, Any] | None = None
        self._sources: dict[str, Dataset] = {}

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
            options = OmegaConf.to_container(data.options, resolve=True)
            self._sources[split] = DATASETS.get(data.name)(
                root=data.root, split=split, limit=data.limit, **options
            )
        return self._sources[split]

    def classes(self, split: str) -> tuple[str, ...]:
        return tuple(getattr(self.source(split), "classes", ()))

    def key(self, split: str, adapter: Adapter, pooling: str) -> dict[str, Any]:
        data = self.cfg.data
        root_mtime = Path(data.root).stat().st_mtime_ns if data.root and Path(data.root).exists() else None
        key = {
            "version": CACHE_VERSION,
            "backbone": self.identity,
            "data": {
                "name": data.name,
                "root": data.root,
                "root_mtime": root_mtime,
                "split": split,
                "limit": data.limit,
                "options": OmegaConf.to_container(data.options, resolve=True),
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
        adapter = adapter_for(self.source(split), img_size, list(data.mean), list(data.std))
        return adapter, self.key(split, adapter, pooling)

    def extract(self, split: str, adapter: Adapter, pooling: str, source: Dataset | None = None) -> Features:
        """Features of a split (or of `source`, a part of it), computed now."""
        data = self.cfg.data
        with cpu_threads(self.cfg.run.threads):
            return extract_features(
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
        if self.cfg.run.cache and (joined := load_joined(self.cache.folder(key), key)) is not None:
            self.used[f"{split}/{pooling}"] = str(self.cache.folder(key))
            return joined
        if self.cfg.run.cache and (cached := self.cache.load(key)) is not None:
            self.used[f"{split}/{pooling}"] = str(self.cache.path(key))
            return cached
        features = self.extract(split, adapter, pooling)
        if self.cfg.run.cache:
            self.used[f"{split}/{pooling}"] = str(self.cache.save(key, features))
        return features
