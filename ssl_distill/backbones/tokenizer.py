"""Tokenizers of the text tower, from maintained libraries; nothing is downloaded.

- `clip` (default): OpenAI CLIP's byte-level BPE (49,408 tokens), whose vocabulary file ships inside
  the open_clip package (`open_clip.tokenizer.SimpleTokenizer`). It cleans and lower-cases the text;
  no start or end token is added (TIPS uses none).
- `sentencepiece`: a SentencePiece model file the user gives (TIPS: a 32,000-piece model). The file's
  bytes go into the spec, so an exported text tower carries its tokenizer with it.

`encode(texts)` returns ids (N, L) and a padding mask (N, L), True on real tokens. Every row is
truncated or padded (with `PAD_ID`) to the context length on its own, and the mask is that row's own:
the official TIPS wrapper returns an all-false `is_padding` for the whole batch as soon as one row is
longer than the context (tips.md, "subtle details" 5), which this never copies.
"""

from __future__ import annotations

import base64
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssl_distill.errors import ConfigError

PAD_ID = 0
TOKENIZERS = ("clip", "sentencepiece")


class Tokenizer:
    """Text -> ids with a per-row padding mask. `spec` rebuilds it (see `build_tokenizer`)."""

    def __init__(self, kind: str = "clip", context_length: int = 32, lowercase: bool = True, model: str | None = None):
        if kind not in TOKENIZERS:
            raise ConfigError(f"tokenizer must be one of {TOKENIZERS}, got '{kind}'")
        if kind == "sentencepiece" and not model:
            raise ConfigError("tokenizer 'sentencepiece' needs a model file (data.options.tokenizer_file)")
        if context_length < 1:
            raise ConfigError(f"context_length must be >= 1, got {context_length}")
        self.kind, self.context_length, self.lowercase, self.model = kind, context_length, lowercase, model

    @property
    def spec(self) -> dict[str, Any]:
        spec = {"kind": self.kind, "context_length": self.context_length, "lowercase": self.lowercase}
        return spec if self.model is None else {**spec, "model": self.model}

    @cached_property
    def _impl(self) -> Any:  # built on first use, so a dataset pickled to loader workers stays light
        if self.kind == "clip":
            from open_clip.tokenizer import SimpleTokenizer

            return SimpleTokenizer()
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_proto=base64.b64decode(self.model))

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_impl"}

    @property
    def vocab_size(self) -> int:
        return len(self._impl.encoder) if self.kind == "clip" else int(self._impl.get_piece_size())

    def tokens(self, text: str) -> list[int]:
        """The ids of one text, before truncation."""
        text = text.lower() if self.lowercase else text
        return self._impl.encode(text) if self.kind == "clip" else self._impl.encode(text, out_type=int)

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """texts (N) -> ids (N, L) int64 padded with PAD_ID, mask (N, L) bool (True on real tokens)."""
        ids = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.int64)
        mask = torch.zeros(len(texts), self.context_length, dtype=torch.bool)
        for row, text in enumerate(texts):
            tokens = self.tokens(text)[: self.context_length]
            if not tokens:
                raise ValueError(f"text {text!r} has no tokens (an empty caption?)")
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = True
        return ids, mask


def build_tokenizer(spec: dict[str, Any]) -> Tokenizer:
    return Tokenizer(**spec)


def tokenizer_from_options(kind: str, file: str | None, context_length: int, lowercase: bool) -> Tokenizer:
    """A tokenizer from a dataset's options: `clip`, or `sentencepiece` with its model file."""
    model = None
    if kind == "sentencepiece":
        if file is None:
            raise ConfigError("data.options.tokenizer=sentencepiece needs data.options.tokenizer_file (a .model file)")
        if not Path(file).is_file():
            raise FileNotFoundError(f"data.options.tokenizer_file: no such file: {file}")
        model = base64.b64encode(Path(file).read_bytes()).decode()
    elif file is not None:
        raise ConfigError(f"data.options.tokenizer_file is for tokenizer=sentencepiece, not '{kind}'")
    return Tokenizer(kind, context_length, lowercase, model)
