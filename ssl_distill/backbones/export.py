"""Exports of a trained backbone: the single `backbone.safetensors` (our spec and preprocessing in its
metadata) and a folder in timm's own layout, `config.json` (`architecture`, `model_args`, `pretrained_cfg`)
plus `model.safetensors`, written by timm's `save_for_hf`, so that

    model = timm.create_model("local-dir:runs/<run>/export", pretrained=True, num_classes=0)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

rebuilds the exact model and the preprocessing `ssl-eval` uses (resize with bicubic interpolation, centre
crop at the model's input size, the training normalisation) with no size typed by hand. The folder can be
pushed to a model hub as is. A video ViT has no timm architecture: it is exported as the single file only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from timm.models import save_for_hf
from torch import nn

from ssl_distill.backbones import PREPROCESS_KEY, export_backbone, timm_module
from ssl_distill.checkpoints import read_checkpoint, resolve_run_path
from ssl_distill.data.transforms import IMAGENET_MEAN, IMAGENET_STD

EXPORT_DIR = "export"  # <run>/export: the timm folder
EVAL_RESIZE = {
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
}  # data.transforms.eval_transform


def preprocess_of(cfg: DictConfig | dict) -> dict[str, list[float]]:
    """The normalisation a training config fed the model: the clip options' (video) or the view transform's."""
    data = OmegaConf.create(cfg).data if isinstance(cfg, dict) else cfg.data
    for section in (data.get("options") or {}, data.get("transform") or {}):
        if section.get("mean") is not None and section.get("std") is not None:
            return {"mean": [float(v) for v in section.mean], "std": [float(v) for v in section.std]}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def read_preprocess(source: str | Path) -> dict[str, list[float]] | None:
    """The normalisation recorded with a backbone source (export file or folder, checkpoint, run directory),
    None when it records none (a timm name, an older export)."""
    path = Path(source)
    if (path / "config.json").is_file():
        recorded = json.loads((path / "config.json").read_text()).get("ssl_distill", {}).get("preprocess")
        return dict(recorded) if recorded else None
    if path.is_dir():
        try:
            path = resolve_run_path(path)
        except FileNotFoundError:
            return None
    if path.suffix == ".safetensors" and path.is_file():
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        return json.loads(metadata[PREPROCESS_KEY]) if PREPROCESS_KEY in metadata else None
    if path.suffix in (".pt", ".pth", ".ckpt") and path.is_file():
        checkpoint = read_checkpoint(path)
        if isinstance(checkpoint, dict) and "config" in checkpoint:
            return preprocess_of(OmegaConf.create(checkpoint["config"]))
    return None


def timm_data_config(backbone: nn.Module, preprocess: dict[str, list[float]]) -> dict[str, Any]:
    """timm's data config for the eval transform at the backbone's input size."""
    size = int(backbone.spec["img_size"])
    return {"input_size": (backbone.in_chans, size, size), **EVAL_RESIZE, **preprocess}


def export_timm_folder(
    backbone: nn.Module, folder: str | Path, preprocess: dict[str, list[float]]
) -> Path | None:
    """Write `folder/config.json` and `folder/model.safetensors` with timm's own writer (replacing the folder
    as a whole); None, and nothing written, for a backbone timm cannot build (a video ViT)."""
    model = timm_module(backbone)
    if model is None:
        return None
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ours = {"spec": backbone.spec, "preprocess": preprocess}
    pretrained_cfg = {"tag": "ssl_distill", "license": None, "hf_hub_id": None}
    try:
        save_for_hf(
            model,
            str(tmp),
            model_config={"pretrained_cfg": pretrained_cfg, "ssl_distill": ours},
            safe_serialization=True,
            data_config=timm_data_config(backbone, preprocess),
        )
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_run(backbone: nn.Module, run_dir: str | Path, cfg: DictConfig) -> Path:
    """At the end of training: `<run>/backbone.safetensors` and the timm folder `<run>/export`; returns the file."""
    preprocess = preprocess_of(cfg)
    path = export_backbone(backbone, Path(run_dir) / "backbone.safetensors", preprocess)
    export_timm_folder(backbone, Path(run_dir) / EXPORT_DIR, preprocess)
    return path
