"""Configs: YAML files (with `base:` composition), `key=value` overrides, schema validation.

A config has the sections `run`, `model`, `data`, `objective`, `optim`, `train` (and `slurm` for
launches). The schemas of `model` (by `model.kind`), `objective` and `data.transform` (by `name`) and
`data.options` (by `data.name`) come from the registered builder's `Config` dataclass, so every key is
checked before any work starts. Registries load their plugins on first use: this module imports no
objective, dataset or backbone module itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ssl_distill.errors import ConfigError
from ssl_distill.registry import BACKBONES, DATASETS, OBJECTIVES, TRANSFORMS, Registry, closest
from ssl_distill.schema import check_values, choice, ranged

PRECISIONS = ("fp32", "bf16", "fp16")

__all__ = [
    "Config", "ConfigError", "load_config", "validate", "from_yaml", "read_yaml", "to_yaml", "check_data_options"
]


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = ranged(0, "[0, inf)")


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str | None = None
    split: str = "train"
    limit: int | None = ranged(None, "[1, inf)")
    val_split: str | None = None  # validation split (eval transform) for objectives that validate (finetune)
    val_limit: int | None = ranged(None, "[1, inf)")
    batch_size: int = ranged(64, "[1, inf)")
    num_workers: int = ranged(0, "[0, inf)")
    options: Any = field(default_factory=dict)  # schema: DATASETS.get(name).Config (e.g. video num_frames)
    transform: Any = field(default_factory=lambda: {"name": "mae"})  # schema: TRANSFORMS.get(name).Config


@dataclass
class OptimConfig:
    lr: float | None = ranged(None, "(0, inf)")  # absolute; None means base_lr * global_batch / 256
    base_lr: float = ranged(1.5e-4, "(0, inf)")
    min_lr: float = ranged(0.0, "[0, inf)")
    weight_decay: float = ranged(0.05, "[0, inf)")
    weight_decay_end: float | None = ranged(None, "[0, inf)")  # cosine from weight_decay to this; None: constant
    betas: list[float] = ranged([0.9, 0.95], "[0, 1)")
    warmup_fraction: float = ranged(0.1, "[0, 1]")  # of all steps, linear from 0 to lr, then half-cosine to min_lr
    clip_grad: float | None = ranged(None, "(0, inf)")


@dataclass
class TrainConfig:
    epochs: int = ranged(1, "[1, inf)")
    max_steps: int | None = ranged(None, "[1, inf)")  # if set, the run stops here (schedules span this many steps)
    precision: str = choice("fp32", PRECISIONS)
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    threads: int | None = ranged(None, "[1, inf)")  # torch CPU threads; None keeps torch's default (1 helps on shared cores)
    log_every: int = ranged(10, "[1, inf)")
    eval_every: int = ranged(0, "[0, inf)")  # steps between validations (Objective.validate on data.val_split); 0: at the end only
    checkpoint_every: int = ranged(0, "[0, inf)")  # steps; 0 saves only at the end
    keep_checkpoints: int = ranged(2, "[0, inf)")  # 0 keeps them all
    resume: bool = True  # continue from the newest complete checkpoint in the run directory
    progress: bool = True  # a tqdm bar on a terminal; else (or when false) a line every log_every steps
    tensorboard: bool = True
    extend: bool = False  # resume with a different train.max_steps / epochs: schedules are recomputed


@dataclass
class MonitorConfig:
    """Online evaluation while training (`engine/monitor.py`): weighted kNN top-1 of the exported backbone
    (and optionally a linear probe) on held-out data, logged to metrics.csv and TensorBoard."""

    every: int = 0  # steps between checks (a multiple of train.log_every); 0 turns the monitor off
    bank_split: str = "train"
    split: str = "val"  # the held-out queries
    bank_limit: int | None = 2000
    limit: int | None = 1000
    k: int = 20
    temperature: float = 0.07
    linear: bool = False  # also a logistic-regression probe (scikit-learn) on the same features
    batch_size: int = 256


@dataclass
class SlurmConfig:
    """submitit AutoExecutor parameters for `ssl-distill launch --slurm`; None leaves SLURM's default."""

    folder: str | None = None  # submitit logs and pickles; default <run dir>/submitit
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = ranged(1, "[1, inf)")
    gpus_per_node: int = ranged(1, "[0, inf)")
    tasks_per_node: int | None = ranged(None, "[1, inf)")  # default: one process per GPU
    cpus_per_task: int = ranged(8, "[1, inf)")
    mem_gb: int | None = ranged(None, "[1, inf)")
    timeout_min: int = ranged(1440, "[1, inf)")
    signal_delay_s: int = ranged(120, "[0, inf)")  # the checkpoint signal comes this long before the time limit
    max_requeues: int = ranged(30, "[0, inf)")
    additional: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH options


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: Any = field(default_factory=lambda: {"kind": "vit"})  # schema: BACKBONES.get(kind).Config
    data: DataConfig = field(default_factory=DataConfig)
    objective: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)



def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read one YAML file, merging the files named by its `base:` key (relative paths) first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"{path}: `base` includes itself through {' -> '.join(map(str, seen))}")
    try:
        node = OmegaConf.load(path)
    except Exception as error:  # yaml errors carry the line number in their text
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    bases = node.pop("base", None)
    if bases is None:
        return node
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _read_yaml((path.parent / base).resolve(), seen + (path,)))
    return OmegaConf.merge(merged, node)


def _valid_keys(schema: Any, dotted: str) -> list[str]:
    """The valid field names at `dotted` inside a dataclass schema (for 'did you mean')."""
    node = schema
    for part in [p for p in dotted.split(".") if p][:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return []
        default = fields[part].default_factory() if fields[part].default_factory is not MISSING else None
        node = type(default) if dataclasses.is_dataclass(default) else None
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def merge_checked(schema: type, data: Any, where: str, prefix: str = "") -> DictConfig:
    """Merge user values into a dataclass schema; turn OmegaConf errors into ConfigErrors."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or getattr(error, "key", None) or "?"
        message = str(error).splitlines()[0]
        full = f"{prefix}{key}"
        if "not in" in message or "Key '" in message:
            hint = closest(str(key).split(".")[-1], _valid_keys(schema, str(key)))
            raise ConfigError(f"{where}: unknown key '{full}'{hint}") from None
        raise ConfigError(f"{where}: bad value for '{full}': {message}") from None


def _check_named_section(section: Any, registry: Registry, where: str, prefix: str, key: str = "name") -> DictConfig:
    """Merge `section` into the schema of the builder that `section[key]` names."""
    if not isinstance(section, (dict, DictConfig)) or key not in section:
        raise ConfigError(f"{where}: '{prefix}{key}' is required (one of: {', '.join(registry.names())})")
    name = section[key]
    if name not in registry:
        raise ConfigError(
            f"{where}: unknown {registry.kind} '{prefix}{key}={name}'{closest(str(name), registry.names())}; "
            f"known: {', '.join(registry.names())}"
        )
    builder = registry.get(name)
    if hasattr(builder, "variant"):  # an objective with stages: the schema of the stage named
        builder = builder.variant(section)
    return merge_checked(builder.Config, section, where, prefix)


def objective_class(section: Any) -> Any:
    """The class that trains a validated `objective` section (the registered one, or the stage it names)."""
    return OBJECTIVES.get(section.name).variant(section)


def check_data_options(name: str, options: Any, where: str = "config") -> DictConfig:
    """`data.options` checked against dataset `name`'s `Config` (unknown keys name the closest one)."""
    if name not in DATASETS:
        raise ConfigError(
            f"{where}: unknown dataset 'data.name={name}'{closest(str(name), DATASETS.names())}; "
            f"known: {', '.join(DATASETS.names())}"
        )
    return merge_checked(DATASETS.get(name).Config, options or {}, where, "data.options.")


def _check_model(model: Any, objective: Any, where: str) -> DictConfig:
    """The `model` section by its `kind`, over the objective's `default_model`."""
    model = OmegaConf.create({} if model is None else model)
    if model.get("name") == "video_vit" and "kind" not in model:
        raise ConfigError(f"{where}: 'model.name: video_vit' is now 'model.kind: video_vit' (remove model.name)")
    model = OmegaConf.merge(objective.default_model, model)
    if "kind" not in model:
        model.kind = "vit"
    kinds = objective.model_kinds
    if model.kind in BACKBONES and model.kind not in kinds:
        raise ConfigError(
            f"{where}: objective '{objective.Config.name}' works with model.kind {sorted(kinds)}, not '{model.kind}'"
        )
    return _check_named_section(model, BACKBONES, where, "model.", key="kind")


def _resolve_clip_length(cfg: DictConfig, where: str) -> None:
    """A video model's `num_frames` defaults to the clip length the dataset yields; both must agree."""
    if "num_frames" not in cfg.model:
        return
    ours, data = cfg.model.num_frames, cfg.data.options.get("num_frames")
    if ours is None and data is None:
        raise ConfigError(f"{where}: set data.options.num_frames (or model.num_frames): the clip length")
    if ours is not None and data is not None and ours != data:
        raise ConfigError(f"{where}: model.num_frames={ours} differs from data.options.num_frames={data}")
    cfg.model.num_frames = int(ours if ours is not None else data)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load, compose and validate a config; `overrides` are `key=value` strings.

    Raises ConfigError naming the file and key for an unknown key, a wrong type or a missing value.
    """
    where = str(path) if path is not None else "config"
    user = _read_yaml(Path(path)) if path is not None else OmegaConf.create()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        user = OmegaConf.merge(user, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as error:
        raise ConfigError(f"overrides: {str(error).splitlines()[0]}") from None
    return validate(user, where)


def validate(user: DictConfig | dict, where: str = "config") -> DictConfig:
    """Check a (possibly partial) config against the schemas and fill in defaults."""
    user = OmegaConf.create(user) if isinstance(user, dict) else user.copy()
    objective = user.pop("objective", None)
    model = user.pop("model", None)
    transform = options = None
    if "data" in user and user.data is not None:
        transform = user.data.pop("transform", None)
        options = user.data.pop("options", None)
    cfg = merge_checked(Config, user, where)
    if objective is None:
        raise ConfigError(f"{where}: the 'objective' section is required (one of: {', '.join(OBJECTIVES.names())})")
    cfg.objective = _check_named_section(objective, OBJECTIVES, where, "objective.")
    objective_cls = objective_class(cfg.objective)
    cfg.model = _check_model(model, objective_cls, where)
    cfg.data.options = check_data_options(cfg.data.name, options, where)
    if transform is None or "name" not in transform:
        transform = OmegaConf.merge(objective_cls.default_transform, transform or {})
    cfg.data.transform = _check_named_section(transform, TRANSFORMS, where, "data.transform.")
    _resolve_clip_length(cfg, where)
    check_values(cfg, Config, where)
    check_values(cfg.objective, objective_cls.Config, where, "objective.")
    check_values(cfg.model, BACKBONES.get(cfg.model.kind).Config, where, "model.")
    check_values(cfg.data.options, DATASETS.get(cfg.data.name).Config, where, "data.options.")
    check_values(cfg.data.transform, TRANSFORMS.get(cfg.data.transform.name).Config, where, "data.transform.")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{where}: missing required value for '{missing[0]}'")
    return cfg


def read_yaml(path: str | Path) -> DictConfig:
    """A config file with the files its `base:` names merged in, unvalidated (evaluation reads its `data`)."""
    return _read_yaml(Path(path).resolve())


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml(text: str) -> DictConfig:
    return validate(OmegaConf.create(text), "saved config")


def as_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def config_changes(old: DictConfig, new: DictConfig, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two resolved configs."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, DictConfig) and isinstance(b, DictConfig):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif as_dict(a) != as_dict(b):
            changes.append(f"{prefix}{key}: {as_dict(a)} -> {as_dict(b)}")
    return changes
