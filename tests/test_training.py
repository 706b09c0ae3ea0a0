"""Tiny end-to-end runs from the YAML configs: losses fall, resume is exact (with loader workers too),
NaN stops cleanly, fused AdamW makes the for-loop update, exports load into timm with identical outputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch

from ssl_distill.backbones import load_backbone
from ssl_distill.checkpoints import list_checkpoints
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.engine import NonFiniteLossError, Trainer, train
from ssl_distill.engine.trainer import adamw

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


def test_a_non_finite_loss_is_caught_before_the_next_checkpoint(tmp_path):
    """Logs (and losses) are read every 3 steps, checkpoints come every 2: the NaN of step 3 is read
    by the save at step 4, which raises instead of writing."""
    cfg = tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=8", "train.checkpoint_every=2", "train.log_every=3")
    trainer = Trainer(cfg)
    forward = trainer.objective.forward

    def poisoned(batch, step):
        output = forward(batch, step)
        if step == 3:
            output.loss = output.loss * float("inf")
        return output

    trainer.objective.forward = poisoned
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at step 3 \(terms: \{'reconstruction': .*checkpoint_00000002\.pt"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(trainer.checkpoint_dir)] == ["checkpoint_00000002.pt"]
    with open(trainer.run_dir / "metrics.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [3]


def test_adamw_is_fused_on_cpu_with_the_for_loop_update(tmp_path):
    torch.manual_seed(0)
    weights = [torch.randn(32, 16), torch.randn(16), torch.randn(8, 8)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for fused in (False, True):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        groups = [{"params": params[::2], "weight_decay": 0.05}, {"params": params[1::2], "weight_decay": 0.0}]
        optimizer = adamw(groups, 1e-2, (0.9, 0.95), torch.device("cpu")) if fused else torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=False)
        assert optimizer.defaults["fused"] is (True if fused else None)
        optimizer.step()
        results.append(params)
    for weight, loop, fused in zip(weights, *results):
        assert not torch.equal(loop, weight)
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)
    # a checkpoint keeps its writer's implementation flags in the param groups; resuming keeps ours
    trainer = Trainer(tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=2"))
    state = trainer.state()
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None
    trainer.load_state(state)
    assert all(group["fused"] for group in trainer.optimizer.param_groups)


def test_video_run_with_workers_resumes_exactly_like_one_without(tmp_path):
    """2 workers serve a whole run (4 steps an epoch here) and the stopped + resumed run equals an
    uninterrupted one without workers: items depend on (index, sample seed) only."""
    echo = write_synthetic_echo(tmp_path / "echo", 8, seed=3, size=32, frames=24)
    common = [f"data.root={echo}", "data.split=all", "data.batch_size=2", "train.max_steps=10", "optim.lr=1e-3"]
    full = train(tiny_config("videomae/tiny_echo.yaml", tmp_path / "a", *common))
    workers = [*common, "data.num_workers=2", "train.checkpoint_every=5"]
    first = train(tiny_config("videomae/tiny_echo.yaml", tmp_path / "b", *workers), stop_at=5)
    second = train(tiny_config("videomae/tiny_echo.yaml", tmp_path / "b", *workers))
    assert (first.steps, second.start_step) == (5, 5)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)


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
