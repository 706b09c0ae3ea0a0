"""Evaluation settings: one schema with a section per protocol, overridden by `key=value` strings.

`data` is a registered dataset name (`mnist`), a shorthand for your own images (`folder:PATH` for an
ImageFolder tree, `csv:FILE` for a file list), or a YAML file holding either a `data:` section (a
training config works: its `base:` chain is followed) or the data mapping itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from eval.search import INDEX_KINDS
from ssl_distill.config import SlurmConfig, check_data_options, merge_checked, read_yaml
from ssl_distill.errors import ConfigError
from ssl_distill.schema import check_values, choice, ranged

POOLINGS = ("cls", "mean", "cls_mean", "patch", "cls2", "consistent", "specific", "combined")  # the last four: named representations (eval/multiview.py)


class EvalConfigError(ValueError):
    """A settings problem a user can fix; the message names the key."""


@dataclass
class ModelConfig:
    """Sizes for a timm name (checkpoints and exports carry their own); `seed` fixes a random init.

    `weights`: a weights file for a timm name, or `none` for random weights (`--random-init`): a timm name
    needs one of the two; for a checkpoint, run or export, `none` gives a random init of its architecture.
    """

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
    """A registered dataset; `options` go to its builder; `img_size` None means the backbone's input size,
    `mean`/`std` None the normalisation recorded with the backbone (its training config), else ImageNet's."""

    name: str = "mnist"
    root: str | None = None
    limit: int | None = ranged(None, "[1, inf)")
    options: Any = field(default_factory=dict)  # schema: the dataset's Config (checked at load)
    batch_size: int = ranged(256, "[1, inf)")
    num_workers: int = ranged(0, "[0, inf)")
    img_size: int | None = ranged(None, "[1, inf)")
    mean: list[float] | None = None
    std: list[float] | None = ranged(None, "(0, inf)")


RANDOM_WEIGHTS = ("none", "random")  # model.weights values that ask for a random init


@dataclass
class RunConfig:
    device: str = "auto"  # auto | cpu | cuda
    cache: bool = True
    cache_dir: str | None = None  # None: $SSL_DISTILL_CACHE/eval
    progress: bool = True
    fit_threads: int | None = 1  # CPU threads for probes and heads on cached features (see ssl_distill/runtime.py)
    threads: int | None = ranged(None, "[1, inf)")  # CPU threads for feature extraction; None keeps torch's
    small_split: int = 50  # warn when a split has fewer samples: its metrics have a standard error above 0.07


@dataclass
class FeaturesConfig:
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    pooling: str = "cls"
    sample: int = 1000  # points saved for the report's 2-D projection


@dataclass
class IndexSettings:
    """The faiss index of knn and retrieve (eval/search.py IndexSpec): flat (exact) | ivf | ivfpq | hnsw."""

    index: str = choice("flat", INDEX_KINDS)
    nlist: int | None = ranged(None, "[1, inf)")  # ivf, ivfpq: k-means cells; None: 4 sqrt(bank size)
    nprobe: int = ranged(32, "[1, inf)")  # ivf, ivfpq: cells visited per query (nprobe = nlist is exact)
    m: int = ranged(32, "[1, inf)")  # ivfpq: sub-quantizers (must divide the dim); hnsw: neighbours per node
    nbits: int = ranged(8, "[1, 16]")  # ivfpq: bits per sub-quantizer code
    ef_search: int = ranged(128, "[1, inf)")  # hnsw
    ef_construction: int = ranged(40, "[1, inf)")  # hnsw
    train_size: int | None = ranged(None, "[1, inf)")  # ivf, ivfpq: sampled rows; None: min(N, 64 nlist)
    recall_queries: int = ranged(1000, "[0, inf)")  # approximate kinds: queries checked against exact search


@dataclass
class KNNConfig(IndexSettings):
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
    Cs: list[float] = field(default_factory=lambda: [1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4])
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
class RetrieveConfig(IndexSettings):
    protocol: str = choice("splits", ("splits", "cmd"))  # cmd: queries are every query_every-th query_split image (eval/retrieve.py)
    gallery_split: str = "train"
    query_split: str = "val"
    query_every: int = ranged(9, "[1, inf)")  # cmd protocol
    pooling: str = "cls"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    map_k: int | None = None  # None ranks the whole gallery (cmd protocol: 100)
    chunk_size: int = 1024
    load_index: str | None = None  # a saved gallery index (labels in <load_index>.labels.npy) to search instead
    save_index: str | None = None  # write the gallery index (and its labels) to this path


@dataclass
class KNNPairsConfig:
    """`ssl-eval knn-pairs`: neighbour indices for training (STEGO / CoTAP NNS files, eval/pairs.py)."""

    split: str = "train"
    pooling: str = "mean"  # STEGO: globally average-pooled features
    top: int = ranged(30, "[2, inf)")  # columns, the image itself first (STEGO's top-30)
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
class ClusterConfig:
    split: str = "val"  # the held-out split (MRDD's release scores its train split)
    pooling: str = "cls"
    runs: int = 10
    n_init: int = 10
    seed: int = 0
    normalize: bool = False  # L2-normalise features before k-means


ZERO_SHOT_TEMPLATES = ["a photo of a {}", "a {}", "a {} shape", "an image of a {}", "a drawing of a {}"]


@dataclass
class ZeroShotConfig:
    split: str = "val"
    pooling: str = "cls"  # TIPS: cls (CLS-1) as the official zero-shot demo; cls2 for the second class token
    text: str | None = None  # the text tower; None: text.safetensors next to the backbone
    templates: list[str] = field(default_factory=lambda: list(ZERO_SHOT_TEMPLATES))


@dataclass
class TextRetrieveConfig:
    split: str = "val"
    pooling: str = "cls"
    caption: str | None = None  # the caption stream; None: the dataset's first
    text: str | None = None  # the text tower; None: text.safetensors next to the backbone
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class ReportConfig:
    projection: str = "auto"  # auto (t-SNE up to tsne_max points, else PCA) | pca | tsne
    tsne_max: int = 1000
    baselines: bool = False  # first run the missing baselines: random init of each backbone, raw pixels on images


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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    text_retrieve: TextRetrieveConfig = field(default_factory=TextRetrieveConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # for --slurm / --local launches


SHORTHANDS = ("folder", "csv")  # --data folder:PATH | csv:FILE


def _data_mapping(data: str) -> Any:
    kind, _, rest = data.partition(":")
    if kind in SHORTHANDS and rest:
        return {"data": {"name": kind, "root": rest}}
    path = Path(data)
    if path.suffix not in (".yaml", ".yml"):
        return {"data": {"name": data}}
    if not path.is_file():
        raise EvalConfigError(f"--data: dataset config not found: {path}")
    try:
        node = read_yaml(path)  # follows `base:` like training does
    except ConfigError as error:
        raise EvalConfigError(str(error)) from None
    section = node.get("data") if "data" in node else node
    if not isinstance(section, DictConfig) or "name" not in section:
        raise EvalConfigError(
            f"--data {path}: no dataset in it (expected a 'data:' section with a 'name', in the file or a "
            "file its 'base:' names, or a mapping with 'name')"
        )
    known = {f.name for f in dataclasses.fields(DataConfig)}
    mapping = {k: v for k, v in section.items() if k in known}
    transform = section.get("transform")
    if isinstance(transform, DictConfig):  # a training config: evaluate with the normalisation it trained with
        mapping.update({k: transform[k] for k in ("mean", "std") if k in transform and k not in mapping})
    return {"data": mapping}


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
    given = list(merged.data.options or {})
    try:
        checked = check_data_options(merged.data.name, merged.data.options, "ssl-eval")
        check_values(merged, EvalConfig, "ssl-eval")
    except ConfigError as error:
        raise EvalConfigError(str(error).removeprefix("ssl-eval: ")) from None
    # only the options given are kept: the others come from the backbone (clip shape) or the dataset's defaults
    merged.data.options = OmegaConf.create({key: checked[key] for key in given})
    for section in ("features", "knn", "linear", "retrieve", "knn_pairs", "anomaly", "cluster", "zeroshot", "text_retrieve"):
        if merged[section].pooling not in POOLINGS:
            raise EvalConfigError(
                f"{section}.pooling must be one of {POOLINGS}, got '{merged[section].pooling}'"
            )
    return merged
