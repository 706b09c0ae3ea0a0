"""Backbones: the factory by `model.kind` (`build_backbone`) and the one way to load them (`load_backbone`).

Kinds: `vit` (any timm VisionTransformer by name), `video_vit` (tubelet ViT) and `swin` (any timm
SwinTransformer by name, `swin.py`); each registers with its `Config`, the schema of the config's `model` section. A source to load is one of our training
checkpoints (`.pt`), a run directory, an exported `.safetensors` file, or a timm model name
(`timm:<name>` or a bare name) with an optional weights file. Loading is strict: missing or unexpected
keys raise instead of leaving random weights in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ssl_distill.backbones.encoder import Encoded, TokenEncoder
from ssl_distill.backbones.swin import Swin
from ssl_distill.backbones.video_vit import VideoViT, VideoViTConfig
from ssl_distill.backbones.vit import ViT, ViTConfig, mask_from_keep
from ssl_distill.checkpoints import read_checkpoint, resolve_run_path
from ssl_distill.errors import BackboneLoadError
from ssl_distill.files import atomic_path
from ssl_distill.registry import BACKBONES

BACKBONES.register("vit", config=ViTConfig)(ViT)
BACKBONES.register("video_vit", config=VideoViTConfig)(VideoViT)

SPEC_KEY = "ssl_distill.spec"

__all__ = [
    "BACKBONES",
    "BackboneLoadError",
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
    return BACKBONES.get(kind)(**spec, initialize=initialize)


def _timm_module(backbone: nn.Module) -> nn.Module:
    """The timm model inside (the bare VisionTransformer or SwinTransformer), else the backbone itself."""
    return backbone.vit if isinstance(backbone, ViT) else backbone.swin if isinstance(backbone, Swin) else backbone


def backbone_weights(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The weights in timm's naming (the bare timm model for an image ViT or a Swin)."""
    return _timm_module(backbone).state_dict()


def _load_strict(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    module = _timm_module(backbone)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneLoadError(
            f"{source}: weights do not match the backbone: missing keys {result.missing_keys[:8]}, "
            f"unexpected keys {result.unexpected_keys[:8]}"
        )


def export_backbone(backbone: nn.Module, path: str | Path) -> Path:
    """Write the backbone as safetensors that timm loads from a local file (`timm.create_model(name,
    pretrained_cfg_overlay=dict(file=path), num_classes=0, **sizes)` with pretrained loading on); the
    spec goes into the file's metadata so `load_backbone(path)` needs nothing else. Written atomically."""
    path = Path(path)
    weights = {k: v.detach().contiguous() for k, v in backbone_weights(backbone).items()}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata={SPEC_KEY: json.dumps(backbone.spec)})
    return path


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return read_checkpoint(path)
    except FileNotFoundError:
        raise BackboneLoadError(f"checkpoint not found: {path}") from None
    except Exception as error:
        raise BackboneLoadError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None


def load_backbone(source: str | Path, weights: str | None = None, **sizes: Any) -> nn.Module:
    """Load a backbone for distillation or evaluation; `sizes` override the spec (timm names only)."""
    path = Path(source)
    if path.is_dir():
        try:
            path = resolve_run_path(path)
        except FileNotFoundError as error:
            raise BackboneLoadError(str(error)) from None
    text = str(path) if path.exists() else str(source)
    if text.endswith(".safetensors"):
        if not path.is_file():
            raise BackboneLoadError(f"exported weights not found: {path}")
        with safe_open(text, "pt") as handle:
            metadata = handle.metadata() or {}
        if SPEC_KEY in metadata:
            spec = json.loads(metadata[SPEC_KEY])
        elif "name" in sizes:
            spec = dict(sizes)
        else:
            raise BackboneLoadError(f"{path}: no {SPEC_KEY} metadata; pass name= and sizes to load it")
        backbone = build_backbone(spec, initialize=False)
        _load_strict(backbone, load_file(text), text)
        return backbone
    if path.suffix in (".pt", ".pth", ".ckpt"):
        checkpoint = _read_checkpoint(path)
        if not isinstance(checkpoint, dict) or "backbone" not in checkpoint or "backbone_spec" not in checkpoint:
            raise BackboneLoadError(f"{path}: not an ssl_distill checkpoint (no 'backbone' and 'backbone_spec')")
        backbone = build_backbone(checkpoint["backbone_spec"], initialize=False)
        _load_strict(backbone, checkpoint["backbone"], text)
        return backbone
    name = text.removeprefix("timm:")
    kind = "swin" if name.startswith("swin") else "vit"
    backbone = build_backbone({"kind": kind, "name": name, **sizes}, initialize=weights is None)
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
