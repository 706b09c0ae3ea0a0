"""Python entry points: run one protocol (what the CLI does), the quick benchmark a demo calls, and a
table of several benchmark results.

    from eval.api import evaluate, format_results
    tiny = ["model.img_size=32", "model.patch_size=4"]
    rows = {"random init": evaluate("vit_tiny_patch16_224", overrides=tiny),
            "student": evaluate("runs/dmae/backbone.safetensors")}
    print(format_results(rows))
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

from eval import anomaly, features, knn, linear, pairs, retrieve, segment
from eval.config import load_eval_config
from eval.results import Result, format_table, write_result
from eval.store import FeatureStore, is_file_source

PROTOCOLS: dict[str, Callable[..., Result]] = {
    "features": features.run,
    "knn": knn.run,
    "linear": linear.run,
    "segment": segment.run,
    "retrieve": retrieve.run,
    "anomaly": anomaly.run,
    "knn-pairs": pairs.run,
}
DEFAULT_DATA = {"segment": "shapes"}

# protocol -> (dataset, settings, metric, name in the returned dict)
BENCHMARK = {
    "knn": ("mnist", (), "top1", "knn_top1"),
    "linear": ("mnist", (), "top1", "linear_top1"),
    "segment": ("shapes", ("data.limit=2000",), "miou", "segment_miou"),
}


def backbone_name(backbone: str | Path | nn.Module) -> str:
    if isinstance(backbone, nn.Module):
        return type(backbone).__name__
    return str(backbone).removeprefix("timm:") if not is_file_source(backbone) else str(backbone)


def default_out_dir(backbone: str | Path | nn.Module) -> Path:
    """Next to a checkpoint or export (`<dir>/eval`), else `runs/eval/<name>`."""
    if not isinstance(backbone, nn.Module) and is_file_source(backbone):
        return Path(backbone).parent / "eval"
    return Path("runs") / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone_name(backbone))


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
) -> tuple[Result, Path | None]:
    """Run one protocol; with `write`, save `<out>/<protocol>-<data>.json` (+ side arrays), return its path."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    cfg = load_eval_config(data or DEFAULT_DATA.get(protocol, "mnist"), list(overrides))
    store = FeatureStore(backbone, cfg)
    start = time.perf_counter()
    result = PROTOCOLS[protocol](store, cfg)
    seconds = time.perf_counter() - start
    if not write:
        return result, None
    header = {
        "backbone": backbone_name(backbone),
        "backbone_id": store.identity,
        "data": cfg.data.name,
        "seconds": round(seconds, 3),
        "config": OmegaConf.to_container(
            OmegaConf.masked_copy(cfg, ["model", "data", protocol.replace("-", "_")]), resolve=True
        ),
        "features": dict(store.used),
    }
    return result, write_result(result, out or default_out_dir(backbone), _stem(protocol, cfg), header)


def evaluate(
    backbone: str | Path | nn.Module,
    protocols: Sequence[str] = ("knn", "linear", "segment"),
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """The quick benchmark: kNN top-1 (k=20, T=0.07; bank MNIST train, queries val), linear-probe top-1 on
    MNIST (train -> val) and linear segmentation mIoU on shapes (2,000 train -> 1,000 val).

    Returns e.g. {"knn_top1": .., "linear_top1": .., "segment_miou": .., "seconds": ..}; writes the result
    JSONs into `out` when given. `overrides` are `key=value` settings (e.g. model sizes for a timm name).
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
    scores["seconds"] = time.perf_counter() - start
    return scores


def format_results(results: Mapping[str, Mapping[str, float]]) -> str:
    """{row name: evaluate(...) output} -> a Markdown table, one row per backbone."""
    return format_table([{"backbone": name, **scores} for name, scores in results.items()])
