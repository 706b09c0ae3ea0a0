"""Python entry points: run one protocol (what the CLI does), the quick benchmark a demo calls, and a
table of several benchmark results.

    from eval.api import evaluate, format_results
    rows = {"student": evaluate("runs/dmae"),
            "random init (same shape)": evaluate("runs/dmae", overrides=["model.weights=none"]),
            "pixels": evaluate("pixels", protocols=["knn"])}
    print(format_results(rows))
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from eval import anomaly, cluster, features, knn, linear, pairs, retrieve, segment, text_retrieve, zeroshot
from eval.baselines import PIXELS, RawPixels
from eval.config import load_eval_config
from eval.results import Result, format_table, write_result
from eval.store import FeatureStore, is_file_source, random_init

PROTOCOLS: dict[str, Callable[..., Result]] = {
    "features": features.run,
    "knn": knn.run,
    "linear": linear.run,
    "segment": segment.run,
    "retrieve": retrieve.run,
    "anomaly": anomaly.run,
    "cluster": cluster.run,
    "zeroshot": zeroshot.run,
    "text_retrieve": text_retrieve.run,
    "knn-pairs": pairs.run,
}
DEFAULT_DATA = {"segment": "shapes", "zeroshot": "shapes_text", "text_retrieve": "shapes_text"}

# protocol -> (dataset, settings, metric, name in the returned dict)
BENCHMARK = {
    "knn": ("mnist", (), "top1", "knn_top1"),
    "linear": ("mnist", (), "top1", "linear_top1"),
    "segment": ("shapes", ("data.limit=2000",), "miou", "segment_miou"),
}


def backbone_name(backbone: str | Path | nn.Module, cfg: DictConfig | None = None) -> str:
    if isinstance(backbone, nn.Module):
        return type(backbone).__name__
    name = str(backbone).removeprefix("timm:") if not is_file_source(backbone) else str(backbone)
    if name == PIXELS and cfg is not None:
        return f"pixels ({RawPixels.sizes(cfg.model)['img_size']} px)"
    if cfg is not None and random_init(cfg.model):
        return f"{name} (random init, seed {cfg.model.seed})"
    return name


def _run_dir_of(path: Path) -> Path:
    """The folder a backbone path belongs to: a run directory itself, the run of its `export` folder or
    checkpoint, else the file's folder."""
    if path.is_dir():
        export_of_run = (path / "config.json").is_file() and (path.parent / "config.yaml").is_file()
        return path.parent if export_of_run else path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def default_out_dir(backbone: str | Path | nn.Module, cfg: DictConfig | None = None) -> Path:
    """`<run or folder>/eval` for a path (`.../eval/random-init-seed<N>` for its random init), else
    `runs/eval/<name>-<sizes>[-random-seed<N> | -<weights file>]`, so baselines of other sizes or seeds
    do not overwrite each other."""
    random = cfg is not None and random_init(cfg.model)
    if not isinstance(backbone, nn.Module) and is_file_source(backbone):
        out = _run_dir_of(Path(backbone)) / "eval"
        return out / f"random-init-seed{cfg.model.seed}" if random else out
    name = backbone_name(backbone)
    if cfg is not None and not isinstance(backbone, nn.Module):
        if name == PIXELS:
            sizes = RawPixels.sizes(cfg.model)
        else:
            keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
            sizes = {key: cfg.model[key] for key in keys if cfg.model[key] is not None}
        parts = [name, *(f"{key}{value}" for key, value in sizes.items())]
        if random:
            parts.append(f"random-seed{cfg.model.seed}")
        elif cfg.model.weights is not None:
            parts.append(Path(str(cfg.model.weights)).stem)
        name = "-".join(parts)
    return Path("runs") / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def equivalent_command(
    protocol: str,
    backbone: str | Path | nn.Module,
    data: str | None,
    overrides: Sequence[str],
    out: str | Path | None,
) -> str | None:
    """The `ssl-eval` command line that makes the same result (None for a module given in Python)."""
    if isinstance(backbone, nn.Module):
        return None
    args = ["ssl-eval", protocol, "--backbone", str(backbone), *(["--data", data] if data else [])]
    return shlex.join([*args, *(["--out", str(out)] if out else []), *overrides])


def _stem(protocol: str, cfg) -> str:
    variant = {
        "anomaly": cfg.anomaly.method,
        "linear": "ridge" if cfg.linear.target == "regression" else "",
    }.get(protocol)
    return "-".join(part for part in (protocol, variant, cfg.data.name) if part)


def run_protocol(
    protocol: str,
    backbone: str | Path | nn.Module,
    data: str | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    write: bool = True,
    command: str | None = None,
) -> tuple[Result, Path | None]:
    """Run one protocol; with `write`, save `<out>/<protocol>-<data>.json` (+ side arrays), return its path.
    `command` (what the CLI was given) is recorded; by default the equivalent `ssl-eval` command."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    data = data or DEFAULT_DATA.get(protocol, "mnist")
    cfg = load_eval_config(data, list(overrides))
    store = FeatureStore(backbone, cfg)
    start = time.perf_counter()
    result = PROTOCOLS[protocol](store, cfg)
    seconds = time.perf_counter() - start
    result.details["n"] = dict(store.sizes)
    if store.warnings:
        result.details["warnings"] = list(store.warnings)
    if not write:
        return result, None
    header = {
        "backbone": backbone_name(backbone, cfg),
        "backbone_id": store.identity,
        "baseline": "random init" if random_init(cfg.model) else PIXELS if str(backbone) == PIXELS else None,
        "data": cfg.data.name,
        "n": dict(store.sizes),
        "seconds": round(seconds, 3),
        "command": command or equivalent_command(protocol, backbone, data, overrides, out),
        "args": None if isinstance(backbone, nn.Module) else
        {"backbone": str(backbone), "data": data, "overrides": list(overrides)},
        "config": OmegaConf.to_container(
            OmegaConf.masked_copy(cfg, ["model", "data", protocol.replace("-", "_")]), resolve=True
        ),
        "data_options": store.data_options,
        "features": dict(store.used),
        "warnings": list(store.warnings),
    }
    return result, write_result(result, out or default_out_dir(backbone, cfg), _stem(protocol, cfg), header)


def evaluate(
    backbone: str | Path | nn.Module,
    protocols: Sequence[str] = ("knn", "linear", "segment"),
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """The quick benchmark: kNN top-1 (k=20, T=0.07; bank MNIST train, queries val), linear-probe top-1 on
    MNIST (train -> val) and linear segmentation mIoU on shapes (2,000 train -> 1,000 val).

    Returns e.g. {"knn_top1": .., "knn_n": 1000, "linear_top1": .., ..., "seconds": ..} (`<name>_n`: the
    samples each score was measured on); writes the result JSONs into `out` when given. `overrides` are
    `key=value` settings (e.g. `model.weights=none` for a random init of the backbone's architecture).
    """
    start = time.perf_counter()
    scores: dict[str, float] = {}
    settings = [*overrides, f"run.progress={str(progress).lower()}"]
    for protocol in protocols:
        if protocol not in BENCHMARK:
            raise ValueError(
                f"evaluate: protocol '{protocol}' is not in the benchmark ({', '.join(BENCHMARK)})"
            )
        data, fixed, metric, name = BENCHMARK[protocol]
        result, _ = run_protocol(protocol, backbone, data, [*fixed, *settings], out, write=out is not None)
        scores[name] = result.metrics[metric]
        scores[f"{name.split('_')[0]}_n"] = result.details["n"]["val"]
    scores["seconds"] = time.perf_counter() - start
    return scores


def format_results(results: Mapping[str, Mapping[str, float]]) -> str:
    """{row name: evaluate(...) output} -> a Markdown table, one row per backbone."""
    return format_table([{"backbone": name, **scores} for name, scores in results.items()])
