"""Evaluation settings: one schema with a section per protocol, overridden by `key=value` strings.

`data` is a bundled dataset name (`mnist`), or a YAML file holding either a `data:` section (a
training config works) or the data mapping itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl_distill.config import SlurmConfig, check_data_options, merge_checked
from ssl_distill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl_distill.errors import ConfigError

POOLINGS = ("cls", "mean", "cls_mean", "patch")


class EvalConfigError(ValueError):
    """A settings problem a user can fix; the message names the key."""


@dataclass
class ModelConfig:
    """Sizes for a timm name (checkpoints and exports carry their own); `seed` fixes a random init."""

    img_size: int | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    weights: str | None = None
    seed: int = 0


@dataclass
class DataConfig:
    """A registered dataset; `options` go to its builder; `img_size` None means the backbone's input size."""

    name: str = "mnist"
    root: str | None = None
    limit: int | None = None
    options: Any = field(default_factory=dict)  # schema: the dataset's Config (checked at load)
    batch_size: int = 256
    num_workers: int = 0
    img_size: int | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class RunConfig:
    device: str = "auto"  # auto | cpu | cuda
    cache: bool = True
    cache_dir: str | None = None  # None: $SSL_DISTILL_CACHE/eval
    progress: bool = True
    fit_threads: int | None = 1  # CPU threads for probes and heads on cached features (see ssl_distill/runtime.py)


@dataclass
class FeaturesConfig:
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    pooling: str = "cls"
    sample: int = 1000  # points saved for the report's 2-D projection


@dataclass
class KNNConfig:
    bank_split: str = "train"
    query_split: str = "val"
    pooling: str = "cls"
    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    report_k: int = 20  # k of the headline `top1`
    temperature: float = 0.07
    chunk_size: int = 4096
    sample: int = 1000


@dataclass
class LinearConfig:
    train_split: str = "train"
    eval_split: str = "val"
    pooling: str = "cls"
    head: str = "sklearn"  # sklearn: logistic regression | torch: AdamW linear heads, for large sets
    target: str = "label"  # label | regression (ridge on the dataset's continuous target)
    Cs: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])
    holdout: float = 0.2
    max_iter: int = 1000
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    epochs: int = 30
    batch_size: int = 256
    alphas: list[float] = field(default_factory=lambda: [1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0])
    seed: int = 0


@dataclass
class SegmentConfig:
    train_split: str = "train"
    eval_split: str = "val"
    num_classes: int | None = None  # None: largest mask value + 1
    ignore_index: int = 255
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    overlays: int = 8
    seed: int = 0


@dataclass
class RetrieveConfig:
    protocol: str = "splits"  # splits | cmd (queries: every query_every-th query_split image; see eval/retrieve.py)
    gallery_split: str = "train"
    query_split: str = "val"
    query_every: int = 9  # cmd protocol
    pooling: str = "cls"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    map_k: int | None = None  # None ranks the whole gallery (cmd protocol: 100)
    chunk_size: int = 1024
    index: str | None = None  # a saved gallery index (labels in <index>.labels.npy) to search instead
    save_index: str | None = None  # write the gallery index (and its labels) to this path


@dataclass
class KNNPairsConfig:
    """`ssl-eval knn-pairs`: neighbour indices for training (STEGO / CoTAP NNS files, eval/pairs.py)."""

    split: str = "train"
    pooling: str = "mean"  # STEGO: globally average-pooled features
    top: int = 30  # columns, the image itself first (STEGO's top-30)
    file: str | None = None  # also write the NNS file here (it is always written as <out>/knn-pairs-<data>.nns.npz)
    report_ks: list[int] = field(default_factory=lambda: [1, 7])
    chunk_size: int = 4096


@dataclass
class AnomalyConfig:
    method: str = "distance"  # distance (kNN-distance AUROC) | zero_shot (DISCOVR weighted kNN)
    normal: list[int] = field(default_factory=lambda: [0])
    bank_split: str | None = None  # None: train (distance) or val (zero_shot)
    query_split: str | None = None  # None: val (distance) or test (zero_shot)
    pooling: str = "cls"
    k: int = 10
    temperature: float = 0.07
    binarize: bool = False  # zero_shot: labels become normal (0) vs abnormal (1)
    chunk_size: int = 4096


@dataclass
class ReportConfig:
    projection: str = "auto"  # auto (t-SNE up to tsne_max points, else PCA) | pca | tsne
    tsne_max: int = 1000


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    knn_pairs: KNNPairsConfig = field(default_factory=KNNPairsConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # for --slurm / --local launches


def _data_mapping(data: str) -> Any:
    path = Path(data)
    if path.suffix not in (".yaml", ".yml"):
        return {"data": {"name": data}}
    if not path.is_file():
        raise EvalConfigError(f"--data: dataset config not found: {path}")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise EvalConfigError(f"{path}: a dataset config must be a mapping")
    section = node.get("data", node)
    known = {f.name for f in dataclasses.fields(DataConfig)}
    return {"data": {k: v for k, v in section.items() if k in known}}


def load_eval_config(data: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Defaults, then `data` (a name or YAML file), then `key=value` overrides; unknown keys raise."""
    for item in overrides:
        if "=" not in item:
            raise EvalConfigError(f"override '{item}' is not of the form key=value")
    layers = ([_data_mapping(data)] if data else []) + [OmegaConf.from_dotlist(list(overrides))]
    try:
        merged = merge_checked(EvalConfig, OmegaConf.merge(*layers), "ssl-eval")
    except ConfigError as error:
        raise EvalConfigError(str(error).removeprefix("ssl-eval: ")) from None
    try:
        merged.data.options = check_data_options(merged.data.name, merged.data.options, "ssl-eval")
    except ConfigError as error:
        raise EvalConfigError(str(error).removeprefix("ssl-eval: ")) from None
    for section in ("features", "knn", "linear", "retrieve", "knn_pairs", "anomaly"):
        if merged[section].pooling not in POOLINGS:
            raise EvalConfigError(
                f"{section}.pooling must be one of {POOLINGS}, got '{merged[section].pooling}'"
            )
    return merged
