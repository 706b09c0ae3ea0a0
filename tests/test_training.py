"""Tiny end-to-end runs from the YAML configs: losses fall, resume is exact, NaN stops cleanly,
exports load into timm with identical outputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch

from ssl_distill.backbones import load_backbone
from ssl_distill.checkpoints import list_checkpoints
from ssl_distill.engine import NonFiniteLossError, Trainer, train

from conftest import tiny_config


def falls(losses: list[float], factor: float = 0.9, window: int = 4) -> bool:
    return float(np.mean(losses[-window:])) < factor * float(np.mean(losses[:window]))


@pytest.mark.parametrize("config", ["mae/tiny_mnist.yaml", "dino/tiny_mnist.yaml", "dmae/tiny_mnist.yaml"])
def test_each_objective_learns_on_bundled_data(config, tmp_path, mae_teacher):
    extra = [f"objective.teacher.source={mae_teacher}"] if config.startswith("dmae") else []
    overrides = ["train.max_steps=24", "optim.lr=2e-3", *extra]
    if config.startswith("dino"):
        overrides += ["objective.output_dim=256", "objective.hidden_dim=64", "data.transform.n_local_views=2", "train.max_steps=30"]
    cfg = tiny_config(config, tmp_path, *overrides, decoder=not config.startswith("dino"))
    result = train(cfg)
    assert len(result.losses) == cfg.train.max_steps and all(np.isfinite(result.losses))
    # DINO's cross-entropy starts near ln(output_dim) and falls slowly (the teacher sharpens as it learns)
    assert falls(result.losses, 0.95 if config.startswith("dino") else 0.9), result.losses
    assert result.checkpoint.is_file() and result.exported.is_file()
    with open(result.run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, cfg.train.max_steps + 1))
    assert (result.run_dir / "config.yaml").read_text().count("name:") >= 3


def test_resume_continues_exactly(tmp_path):
    """Stopped at step 5 (mid-epoch: 4 steps per epoch) and resumed == uninterrupted, to 1e-6."""
    common = ["train.max_steps=10", "optim.lr=1e-3", "model.drop_path_rate=0.1"]
    full = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "a", *common))
    first = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "b", *common, "train.checkpoint_every=5"), stop_at=5)
    assert first.steps == 5
    second = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "b", *common, "train.checkpoint_every=5"))
    assert second.start_step == 5
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)
    with open(second.run_dir / "metrics.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == list(range(1, 11))
    changed = Trainer(tiny_config("mae/tiny_mnist.yaml", tmp_path / "b", *common, "optim.min_lr=1e-5"))
    with pytest.warns(UserWarning, match=r"changed config: optim.min_lr: 0.0 -> 1e-05"):
        assert changed.maybe_resume() is not None


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=6", "train.checkpoint_every=2")
    trainer = Trainer(cfg)
    forward = trainer.objective.forward

    def poisoned(batch, step):
        output = forward(batch, step)
        if step == 3:
            output.loss = output.loss * float("nan")
        return output

    trainer.objective.forward = poisoned
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 .*checkpoint_00000002\.pt"):
        trainer.fit()
    saved = list_checkpoints(trainer.checkpoint_dir)
    assert [p.name for p in saved] == ["checkpoint_00000002.pt"]
    assert load_backbone(saved[0]) is not None  # still loadable


def test_export_round_trip_into_timm(tmp_path):
    cfg = tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=2")
    result = train(cfg)
    ours = load_backbone(result.checkpoint).eval()
    spec = {k: v for k, v in ours.spec.items() if k not in ("kind", "name")}
    model = timm.create_model(
        ours.spec["name"], pretrained=True, pretrained_cfg_overlay=dict(file=str(result.exported)), num_classes=0, **spec
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(images), ours.forward_features(images))
        assert torch.equal(model(images), ours(images))
    assert not torch.equal(ours.vit.blocks[0].attn.qkv.weight, load_backbone("vit_tiny_patch16_224", **spec).vit.blocks[0].attn.qkv.weight)
