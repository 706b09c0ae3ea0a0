"""Shared fixtures: tiny configs (CPU-sized models on a slice of bundled MNIST) and a tiny trained
MAE teacher, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ssl_distill.config import load_config

# One intra-op thread in every test (and in the processes they spawn, which read the variable): on two
# shared cores, oversubscribed thread teams made one test 13x slower.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

TINY = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "data.batch_size=16",
    "data.limit=64",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "objective.decoder.dim=32",
    "objective.decoder.depth=1",
    "objective.decoder.heads=2",
]


def tiny_config(config: str, out_dir: Path, *overrides: str, decoder: bool = True):
    """A config from configs/ shrunk for tests; `decoder=False` drops the MAE-decoder keys."""
    base = [o for o in TINY if decoder or not o.startswith("objective.decoder")]
    return load_config(CONFIGS / config, [*base, f"run.out_dir={out_dir}", *overrides])


@pytest.fixture(scope="session")
def mae_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a tiny MAE teacher (48-d, 4 blocks) trained for a few steps."""
    from ssl_distill.engine import train

    out = tmp_path_factory.mktemp("teacher")
    cfg = tiny_config("mae/tiny_mnist.yaml", out, "model.embed_dim=48", "model.depth=4", "model.num_heads=2", "train.max_steps=8")
    return train(cfg).run_dir


@pytest.fixture(scope="session")
def mae_teacher_with_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MAE run (48-d, 4 blocks, 4 heads) with a 2-block decoder, a few steps: the teacher of G2SD's
    generic stage and Hybrid Distillation's MIM teacher."""
    from ssl_distill.engine import train

    out = tmp_path_factory.mktemp("mae_teacher")
    cfg = tiny_config(
        "mae/tiny_mnist.yaml", out, "model.embed_dim=48", "model.depth=4", "model.num_heads=4",
        "objective.decoder.depth=2", "train.max_steps=8",
    )
    return train(cfg).run_dir


def finetune_overrides(out: Path, *extra: str) -> list[str]:
    """A tiny fine-tuning run (48-d, 4 blocks, 4 heads) validating on 64 images."""
    return [
        "model.embed_dim=48", "model.depth=4", "model.num_heads=4", "data.val_limit=64",
        "data.transform.auto_augment=null", *extra,
    ]


@pytest.fixture(scope="session")
def finetuned_teacher(tmp_path_factory: pytest.TempPathFactory, mae_teacher_with_decoder: Path) -> Path:
    """The tiny MAE teacher fine-tuned on labels for a few steps: G2SD's specific-stage teacher."""
    from ssl_distill.engine import train

    out = tmp_path_factory.mktemp("finetuned_teacher")
    overrides = finetune_overrides(out, f"objective.pretrained={mae_teacher_with_decoder}", "train.max_steps=8")
    return train(tiny_config("finetune/tiny_mnist.yaml", out, *overrides, decoder=False)).run_dir


@pytest.fixture(scope="session")
def supervised_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT trained from scratch on labels for a few steps: Hybrid Distillation's supervised teacher."""
    from ssl_distill.engine import train

    out = tmp_path_factory.mktemp("supervised_teacher")
    overrides = finetune_overrides(out, "train.max_steps=8")
    return train(tiny_config("finetune/tiny_mnist_scratch.yaml", out, *overrides, decoder=False)).run_dir
