"""The text tower of an image-text run, for the protocols that need text (zero-shot, image-text retrieval).

It is loaded through `ssl_distill.backbones.load_backbone` from its export (`text.safetensors`, which holds
its tokenizer); by default the file next to the image backbone (or in the run directory) is used.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_distill.backbones import load_backbone

TEXT_FILE = "text.safetensors"


def text_tower_path(backbone: str | Path | nn.Module, text: str | None) -> Path:
    """`text` when given, else `text.safetensors` next to the backbone file or inside the run directory."""
    if text is not None:
        path = Path(text)
    elif isinstance(backbone, nn.Module):
        raise ValueError("a backbone given as a module needs the text tower path (text=...)")
    else:
        source = Path(str(backbone))
        path = (source if source.is_dir() else source.parent) / TEXT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no text tower at {path}: pass <protocol>.text=<text.safetensors of the run>")
    return path


def load_text_tower(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    tower = load_backbone(path)
    if getattr(tower, "kind", None) != "text":
        raise ValueError(f"{path}: not a text tower (its kind is '{getattr(tower, 'kind', '?')}')")
    return tower.eval().to(device)


@torch.inference_mode()
def encode_texts(tower: nn.Module, texts: list[str], batch_size: int = 256) -> Tensor:
    """Strings -> (N, D) L2-normalised embeddings (float32, CPU)."""
    parts = [tower.encode_text(texts[i : i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(parts), dim=-1)
