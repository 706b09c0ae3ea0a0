"""Backbones: the factory by `model.kind` (`build_backbone`) and the one way to load them (`load_backbone`).

Kinds: `vit` (any timm VisionTransformer by name), `video_vit` (tubelet ViT), `cnn` (any timm CNN by
name, for objectives that do not mask tokens), `text` (a text tower with its tokenizer), `conv_vae` (a
convolutional VAE encoder over aligned views), `mrdd` (MRDD's exported encoders) and `swin` (any timm
SwinTransformer by name, `swin.py`); each registers with
its `Config`, the schema of the config's `model` section. A source to load is one of our training
checkpoints (`.pt`), a run directory, an exported `.safetensors` file, or a timm model name
(`timm:<name>` or a bare name) with an optional weights file. Loading is strict: missing or unexpected
keys raise instead of leaving random weights in place.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.models import is_model_in_modules
from torch import nn

from ssl_distill.backbones.cnn import CNN, CNNConfig
from ssl_distill.backbones.conv_vae import ConvVAEConfig, ConvVAEEncoder, MRDDEncoder
from ssl_distill.backbones.encoder import Encoded, TokenEncoder
from ssl_distill.backbones.swin import Swin
from ssl_distill.backbones.text import TextConfig, TextTransformer
from ssl_distill.backbones.video_vit import VideoViT, VideoViTConfig
from ssl_distill.backbones.vit import ViT, ViTConfig, mask_from_keep
from ssl_distill.checkpoints import read_checkpoint, resolve_run_path
from ssl_distill.errors import BackboneLoadError, ConfigError
from ssl_distill.files import atomic_path
from ssl_distill.registry import BACKBONES

BACKBONES.register("vit", config=ViTConfig)(ViT)
BACKBONES.register("video_vit", config=VideoViTConfig)(VideoViT)
BACKBONES.register("cnn", config=CNNConfig)(CNN)
BACKBONES.register("text", config=TextConfig)(TextTransformer)
BACKBONES.register("conv_vae", config=ConvVAEConfig)(ConvVAEEncoder)
BACKBONES.register("mrdd")(MRDDEncoder)  # exported by MRDD (see conv_vae.py); built from specs only

SPEC_KEY = "ssl_distill.spec"
PREPROCESS_KEY = "ssl_distill.preprocess"  # the normalisation training used (see backbones/export.py)

__all__ = [
    "BACKBONES",
    "BackboneLoadError",
    "CNN",
    "Encoded",
    "TokenEncoder",
    "VideoViT",
    "ViT",
    "backbone_weights",
    "build_backbone",
    "export_backbone",
    "load_backbone",
    "load_backbone_into",
    "mask_from_keep",
    "Swin",
]


def build_backbone(spec: Any, initialize: bool = True, **overrides: Any) -> nn.Module:
    """Build from a spec or a validated `model` section: {'kind': 'vit', 'name': <timm name>, sizes...}
    (kind defaults to 'vit'); `overrides` replace its values (e.g. num_frames=1 for a frame encoder)."""
    spec = {**dict(spec), **overrides}
    kind = spec.pop("kind", "vit")
    builder = BACKBONES.get(kind)
    unknown = sorted(set(spec) - set(inspect.signature(builder).parameters))
    if unknown:
        raise ConfigError(f"model.kind={kind} ({spec.get('name', kind)}) takes no {', '.join(unknown)}")
    return builder(**spec, initialize=initialize)


VIT_MODULES = ("vision_transformer", "vision_transformer_hybrid", "deit")


def timm_kind(name: str) -> str:
    """The kind that builds timm model `name`: `vit` for the VisionTransformer family, `swin` for
    SwinTransformers, else `cnn`."""
    if is_model_in_modules(name, VIT_MODULES):
        return "vit"
    return "swin" if is_model_in_modules(name, ("swin_transformer",)) else "cnn"


def timm_module(backbone: nn.Module) -> nn.Module | None:
    """The timm model inside a backbone (the bare VisionTransformer, SwinTransformer or CNN), None for a
    kind timm lacks."""
    if isinstance(backbone, ViT):
        return backbone.vit
    if isinstance(backbone, Swin):
        return backbone.swin
    return backbone.model if isinstance(backbone, CNN) else None


def backbone_weights(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The weights in timm's naming (the bare timm model for an image ViT, a Swin or a CNN)."""
    return (timm_module(backbone) or backbone).state_dict()


def _load_strict(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    module = timm_module(backbone) or backbone
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneLoadError(
            f"{source}: weights do not match the backbone: missing keys {result.missing_keys[:8]}, "
            f"unexpected keys {result.unexpected_keys[:8]}"
        )


def export_backbone(backbone: nn.Module, path: str | Path, preprocess: dict[str, Any] | None = None) -> Path:
    """Write the backbone as safetensors that timm loads from a local file (`timm.create_model(name,
    pretrained_cfg_overlay=dict(file=path), num_classes=0, **sizes)` with pretrained loading on); the
    spec (and the training normalisation, `preprocess`) go into the file's metadata so `load_backbone(path)`
    needs nothing else. Written atomically. The timm folder layout: `backbones/export.py`."""
    path = Path(path)
    weights = {k: v.detach().contiguous() for k, v in backbone_weights(backbone).items()}
    metadata = {SPEC_KEY: json.dumps(backbone.spec)}
    if preprocess is not None:
        metadata[PREPROCESS_KEY] = json.dumps(preprocess)
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata=metadata)
    return path


def _timm_folder_spec(folder: Path) -> dict[str, Any]:
    """The spec of a timm folder (`config.json` + `model.safetensors`): ours when we wrote it, else the
    architecture and its `model_args`."""
    config = json.loads((folder / "config.json").read_text())
    if "spec" in config.get("ssl_distill", {}):
        return config["ssl_distill"]["spec"]
    args = {k: v for k, v in config.get("model_args", {}).items() if k not in ("num_classes", "global_pool")}
    if isinstance(args.get("img_size"), list):
        args["img_size"] = args["img_size"][0]
    return {"kind": timm_kind(config["architecture"]), "name": config["architecture"], **args}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return read_checkpoint(path)
    except FileNotFoundError:
        raise BackboneLoadError(f"checkpoint not found: {path}") from None
    except Exception as error:
        raise BackboneLoadError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None


FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or Path(text).suffix in FILE_SUFFIXES


def load_backbone(source: str | Path, weights: str | None = None, **sizes: Any) -> nn.Module:
    """Load a backbone for distillation or evaluation; `sizes` override the spec (timm names only)."""
    path = Path(source)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        backbone = build_backbone(_timm_folder_spec(path), initialize=False)
        _load_strict(backbone, load_file(str(path / "model.safetensors")), str(path))
        return backbone
    if path.is_dir():
        try:
            path = resolve_run_path(path)
        except FileNotFoundError as error:
            raise BackboneLoadError(str(error)) from None
    elif not path.exists() and not str(source).startswith("timm:") and _looks_like_path(str(source)):
        raise BackboneLoadError(f"{source}: no such run directory, checkpoint or exported file")
    text = str(path) if path.exists() else str(source)
    if text.endswith(".safetensors"):
        try:
            with safe_open(text, "pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(text)
        except Exception as error:
            raise BackboneLoadError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from None
        if SPEC_KEY in metadata:
            spec = json.loads(metadata[SPEC_KEY])
        elif "name" in sizes:
            spec = dict(sizes)
        else:
            raise BackboneLoadError(f"{path}: no {SPEC_KEY} metadata; pass name= and sizes to load it")
        backbone = build_backbone(spec, initialize=False)
        _load_strict(backbone, state, text)
        return backbone
    if path.suffix in (".pt", ".pth", ".ckpt"):
        checkpoint = _read_checkpoint(path)
        if not isinstance(checkpoint, dict) or "backbone" not in checkpoint or "backbone_spec" not in checkpoint:
            raise BackboneLoadError(f"{path}: not an ssl_distill checkpoint (no 'backbone' and 'backbone_spec')")
        backbone = build_backbone(checkpoint["backbone_spec"], initialize=False)
        _load_strict(backbone, checkpoint["backbone"], text)
        return backbone
    name = text.removeprefix("timm:")
    backbone = build_backbone({"kind": timm_kind(name), "name": name, **sizes}, initialize=weights is None)
    if weights is not None:
        state = load_file(weights) if weights.endswith(".safetensors") else torch.load(weights, map_location="cpu", weights_only=True)
        _load_strict(backbone, state.get("model", state) if isinstance(state, dict) else state, weights)
    return backbone


def load_backbone_into(backbone: nn.Module, source: str | Path) -> nn.Module:
    """Copy the weights of a trained backbone (run directory, checkpoint or exported .safetensors) into
    `backbone`, whose spec must match (up to `dynamic_img_size`): continued pretraining (CoTAP, CMD)."""
    path = Path(source)
    if not (path.is_dir() or path.suffix in (".pt", ".pth", ".ckpt", ".safetensors")):
        raise BackboneLoadError(f"{source}: continuing needs trained weights (a run directory, checkpoint or .safetensors)")
    loaded = load_backbone(path)
    ours = {k: v for k, v in backbone.spec.items() if k != "dynamic_img_size"}
    theirs = {k: v for k, v in loaded.spec.items() if k != "dynamic_img_size"}
    if ours != theirs:
        raise BackboneLoadError(f"{source}: its backbone {theirs} differs from the model {ours}")
    _load_strict(backbone, backbone_weights(loaded), str(source))
    return backbone
