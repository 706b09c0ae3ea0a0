"""Teachers from earlier runs: a frozen backbone that runs only as deep as the deepest block it is asked
for, and any other part of the objective that trained it, rebuilt from the run.

A frozen teacher takes no gradient and no optimizer state, stays in eval mode whatever its parent does,
and is not written into checkpoints (it is rebuilt from its source, so a ViT-L teacher does not bloat
every save).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from ssl_distill.backbones import load_backbone
from ssl_distill.checkpoints import newest_checkpoint, read_checkpoint
from ssl_distill.config import from_yaml, objective_class
from ssl_distill.errors import BackboneLoadError, ConfigError


@dataclass
class TeacherConfig:
    source: str = MISSING  # our checkpoint (.pt), exported .safetensors, or a timm name ("timm:<name>")
    weights: str | None = None  # weights file for a timm name
    sizes: dict[str, Any] = field(default_factory=dict)  # timm size overrides for a timm name


class FrozenModule(nn.Module):
    """Base of frozen teachers: no gradient, eval mode whatever the parent does (`frozen`: the objective
    keeps it in eval), no entries in the parent's checkpoints (rebuilt from its source)."""

    frozen = True

    def __init__(self) -> None:
        super().__init__()
        self.register_state_dict_post_hook(_drop_own_entries)
        self.register_load_state_dict_pre_hook(_fill_own_entries)

    def freeze(self) -> None:
        self.requires_grad_(False).eval()


class FrozenPart(FrozenModule):
    """Any module of an earlier run (e.g. `load_part(run, "classifier")`), run under no_grad."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.freeze()

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class FrozenTeacher(FrozenModule):
    """Wraps a backbone; `forward(images, idx_keep)` -> {block: (B, 1 + K, D) float32 pre-norm output}."""

    def __init__(self, backbone: nn.Module, taps: Sequence[int]) -> None:
        super().__init__()
        if not taps:
            raise ValueError("a frozen teacher needs at least one block to tap")
        self.backbone = backbone
        self.taps = tuple(sorted(set(taps)))
        self.stop = self.taps[-1] + 1
        if self.stop > backbone.depth:
            raise ValueError(f"teacher tap {self.taps[-1]} is beyond its {backbone.depth} blocks")
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor, idx_keep: Tensor | None = None) -> dict[int, Tensor]:
        encoded = self.backbone.encode(images, idx_keep=idx_keep, taps=self.taps, stop=self.stop)
        return {block: tokens.float() for block, tokens in encoded.taps.items()}


@dataclass
class DecoderTargets:
    """encoder: (B, 1 + K, D) pre-norm output of the encoder's last block (visible tokens);
    decoder: (B, 1 + L, D_dec) the decoder's residual stream after its first `decoder_blocks` blocks, every
    token (class, visible, and mask tokens at the hidden patches). Both float32."""

    encoder: Tensor
    decoder: Tensor


class FrozenMAETeacher(FrozenModule):
    """A masked autoencoder as a teacher of its decoder's hidden states (G2SD's generic distillation,
    official `G2SD/models_mae.py::forward_decoder` with `teacher=True`): the encoder reads the visible
    tokens, its final-norm latent goes into the MAE's own decoder (embed, mask tokens, positions), which
    stops after `decoder_blocks` blocks, without its final norm or pixel head."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module, decoder_blocks: int) -> None:
        super().__init__()
        depth = len(decoder.decoder.blocks)
        if not 1 <= decoder_blocks <= depth:
            raise ValueError(f"the teacher decoder has {depth} blocks; cannot stop after {decoder_blocks}")
        self.backbone, self.decoder, self.decoder_blocks = backbone, decoder, decoder_blocks
        self.freeze()

    @classmethod
    def from_run(cls, cfg: TeacherConfig, decoder_blocks: int | None = None) -> FrozenMAETeacher:
        """The encoder and decoder of the MAE run `cfg.source` (a run directory or its checkpoint); a source
        without its decoder (an exported encoder, a timm name) raises. `decoder_blocks` None: half the
        decoder's depth (the official 4 of 8)."""
        decoder = load_part(cfg.source, "decoder")
        if decoder.predict is None or decoder.num_prefix_tokens != 1:
            raise BackboneLoadError(f"{cfg.source}: its decoder is not an MAE pixel decoder with a class token")
        blocks = len(decoder.decoder.blocks) // 2 if decoder_blocks is None else decoder_blocks
        return cls(load_teacher_backbone(cfg), decoder, max(blocks, 1))

    @torch.no_grad()
    def forward(self, images: Tensor, idx_keep: Tensor) -> DecoderTargets:
        last = self.backbone.depth - 1
        encoded = self.backbone.encode(images, idx_keep, taps=(last,))
        hidden = self.decoder.hidden(encoded.tokens, idx_keep, self.decoder_blocks)
        return DecoderTargets(encoded.taps[last].float(), hidden.float())


def _drop_own_entries(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _fill_own_entries(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        state_dict.setdefault(prefix + name, tensor.detach())


def load_teacher_backbone(cfg: TeacherConfig) -> nn.Module:
    """Load a teacher backbone from its source (strict: missing or unexpected keys raise, naming the key)."""
    try:
        return load_backbone(cfg.source, weights=cfg.weights, **dict(cfg.sizes))
    except (BackboneLoadError, ConfigError) as error:
        raise BackboneLoadError(f"objective.teacher.source: {error}") from None


def load_part(source: str | Path, part: str) -> nn.Module:
    """Part `part` (a state-dict prefix such as 'decoder') of the objective that trained `source` (a run
    directory or one of its checkpoints), rebuilt from the run's saved config and loaded strictly, frozen.
    'backbone' is the exported encoder (`load_backbone`). A source without the part (an exported
    `.safetensors`, a run of an objective that has no such part) raises BackboneLoadError: a missing
    part is never replaced by a random one."""
    if part == "backbone":
        return load_backbone(source).requires_grad_(False).eval()
    path, checkpoint = _training_checkpoint(source, part)
    try:
        cfg = from_yaml(checkpoint["config"])
    except Exception as error:
        raise BackboneLoadError(f"{path}: not a readable ssl_distill checkpoint ({type(error).__name__}: {error})") from None
    module = objective_class(cfg.objective).build_part(cfg, part)
    _load_part_state(module, path, checkpoint, part, "the part rebuilt from its config")
    return module.requires_grad_(False).eval()


def load_part_into(module: nn.Module, source: str | Path, part: str) -> nn.Module:
    """Copy part `part` (a state-dict prefix such as 'teacher_head') of the run directory or checkpoint
    `source` into `module`, strictly (continued training: CoTAP takes a DINO run's heads and centre)."""
    path, checkpoint = _training_checkpoint(source, part)
    _load_part_state(module, path, checkpoint, part, "this module")
    return module


def _training_checkpoint(source: str | Path, part: str) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run directory, or a checkpoint file, read; BackboneLoadError otherwise."""
    path = Path(source)
    if not path.exists():
        raise BackboneLoadError(f"{source}: no such run directory or checkpoint")
    if path.is_dir():
        try:
            path = newest_checkpoint(path)
        except FileNotFoundError as error:
            raise BackboneLoadError(f"{error}: part '{part}' needs a training checkpoint") from None
    if path.suffix not in (".pt", ".pth", ".ckpt"):
        raise BackboneLoadError(
            f"{source}: holds an exported backbone only, no '{part}'; give the run directory or a checkpoint "
            "of the run that trained it"
        )
    try:
        checkpoint = read_checkpoint(path)
        checkpoint["model"]
    except Exception as error:
        raise BackboneLoadError(f"{path}: not a readable ssl_distill checkpoint ({type(error).__name__}: {error})") from None
    return path, checkpoint


def _load_part_state(module: nn.Module, path: Path, checkpoint: dict[str, Any], part: str, what: str) -> None:
    prefix = f"{part}."
    state = {key[len(prefix) :]: value for key, value in checkpoint["model"].items() if key.startswith(prefix)}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes differ
        raise BackboneLoadError(f"{path}: the checkpoint's '{part}' does not fit {what}: {str(error).splitlines()[-1].strip()}") from None
    if not state or result.missing_keys or result.unexpected_keys:
        raise BackboneLoadError(
            f"{path}: the checkpoint's '{part}' does not match {what}: missing keys "
            f"{result.missing_keys[:8]}, unexpected keys {result.unexpected_keys[:8]}"
        )
