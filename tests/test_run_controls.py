"""The path a new user walks on the training side (issue 10): overrides after --slurm, refusing to stretch a
run's schedules, a signal that reaches the trainer, the online kNN monitor, progress lines, run stats, CNN
backbones for DINO and clear errors for masked objectives."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import timm
import torch

from ssl_distill import cli
from ssl_distill.backbones import load_backbone
from ssl_distill.config import ConfigError, load_config
from ssl_distill.engine import Preempted, Trainer, train
from ssl_distill.engine.progress import summarize
from ssl_distill.engine.run_record import signal_run
from ssl_distill.engine.rundir import read_holder
from ssl_distill.knn import knn_predict

from conftest import CONFIGS, tiny_config

DINO_TINY = [
    "objective.output_dim=64",
    "objective.hidden_dim=32",
    "objective.bottleneck_dim=16",
    "data.transform.n_local_views=2",
]


def _rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_launch_takes_overrides_after_slurm(monkeypatch):
    submitted = {}

    class Job:
        job_id, paths = "1", type("Paths", (), {"folder": "logs"})

    def fake_submit(cfg, local=False):
        submitted.update(cfg=cfg, local=local)
        return Job()

    monkeypatch.setattr("ssl_distill.launch.submit.submit", fake_submit)
    argv = [
        "launch",
        str(CONFIGS / "mae/tiny_mnist.yaml"),
        "--slurm",
        "slurm.nodes=2",
        "slurm.gpus_per_node=8",
    ]
    assert cli.main(argv) == 0
    assert (submitted["cfg"].slurm.nodes, submitted["cfg"].slurm.gpus_per_node) == (2, 8)
    with pytest.raises(SystemExit):
        cli.main(["launch", str(CONFIGS / "mae/tiny_mnist.yaml"), "--slurm", "--bogus"])


def test_a_longer_schedule_needs_train_extend_and_keeps_the_old_config(tmp_path):
    done = train(tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=4"))
    config = (done.run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"scheduled for 4 steps; .* now give 6, .* train.extend=true"):
        train(tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=6"))
    assert (done.run_dir / "config.yaml").read_text() == config
    with pytest.warns(UserWarning, match="changed config"):
        extended = train(
            tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=6", "train.extend=true")
        )
    assert (extended.start_step, extended.steps) == (4, 6)
    assert (done.run_dir / "config.step00000004.yaml").read_text() == config
    assert "max_steps: 6" in (done.run_dir / "config.yaml").read_text()


def test_ssl_distill_signal_reaches_the_trainer(tmp_path, capsys):
    cfg = tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=400", "data.limit=32")
    trainer = Trainer(cfg)
    lock = trainer.run_dir / ".lock"
    seen = {}

    def send():
        while not (trainer.run_dir / "metrics.csv").is_file():  # training has started
            time.sleep(0.05)
        seen["holder"] = read_holder(lock)
        assert cli.main(["signal", str(trainer.run_dir)]) == 0

    sender = threading.Thread(target=send)
    with pytest.raises(Preempted) as stopped, trainer.stop_on_signals(signal.SIGUSR1, signal.SIGTERM):
        sender.start()
        trainer.fit()
    sender.join()
    assert seen["holder"]["signals"] == ["SIGUSR1", "SIGTERM"] and seen["holder"]["pid"] == os.getpid()
    assert 0 < stopped.value.step < 400 and stopped.value.checkpoint.is_file()
    assert read_holder(lock) is None and "sent SIGUSR1" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no trainer is running"):
        signal_run(trainer.run_dir)


@pytest.mark.slow
def test_monitor_logs_knn_from_step_0_without_changing_training(tmp_path):
    from eval.api import run_protocol

    common = ["train.max_steps=4", "train.log_every=2", "optim.lr=1e-3"]
    plain = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "plain", *common))
    held_out = ["monitor.every=2", "monitor.limit=50", "monitor.bank_limit=50"]
    watched = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "watched", *common, *held_out))
    assert watched.losses == plain.losses  # the monitor draws nothing from the training RNG streams
    rows = _rows(watched.run_dir)
    assert [int(r["step"]) for r in rows] == [0, 2, 4] and all(r["monitor/knn_top1"] for r in rows)
    # the last check is the number ssl-eval gives the exported backbone on the same 50 + 50 images
    settings = ["data.limit=50", "knn.ks=[20]", "knn.report_k=20", "run.cache=false", "run.progress=false"]
    result, _ = run_protocol("knn", watched.exported, "mnist", settings, write=False)
    assert float(rows[-1]["monitor/knn_top1"]) == pytest.approx(result.metrics["top1"], abs=1e-6)
    with pytest.raises(ConfigError, match="multiple of train.log_every"):
        Trainer(tiny_config("mae/tiny_mnist.yaml", tmp_path / "x", *common, "monitor.every=3"))


def test_monitor_and_ssl_eval_share_one_knn():
    from eval.knn import knn_rank

    generator = torch.Generator().manual_seed(0)
    half = torch.randn(100, 16, generator=generator)
    bank, queries = (
        torch.cat([half, half]),
        torch.randn(50, 16, generator=generator),
    )  # duplicates: tied neighbours
    labels = torch.randint(0, 5, (200,), generator=generator)
    ranked = knn_rank(bank, labels, queries, [10], num_classes=5, temperature=0.07)[10][:, 0]
    assert torch.equal(knn_predict(bank, labels, queries, 10, 5, 0.07), torch.from_numpy(ranked))


def test_progress_lines_lr_at_the_step_and_run_stats(tmp_path, capsys):
    cfg = tiny_config(
        "mae/tiny_mnist.yaml", tmp_path, "train.max_steps=6", "train.log_every=3", "train.progress=false"
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    printed = capsys.readouterr().out
    assert "step 3/6" in printed and "step 6/6" in printed and "eta" in printed
    rows = _rows(result.run_dir)
    assert [float(r["lr"]) for r in rows] == pytest.approx([trainer.lr_schedule[2], trainer.lr_schedule[5]])
    assert summarize([{"loss": 1.0, "lr": 0.1}, {"loss": 3.0, "lr": 0.2}]) == {"loss": 2.0, "lr": 0.2}
    stats = json.loads((result.run_dir / "run_stats.json").read_text())
    assert stats["steps"] == 6 and stats["images"] == 6 * cfg.data.batch_size and stats["train_seconds"] > 0
    assert stats["images_per_s"] == pytest.approx(stats["images"] / stats["train_seconds"], rel=1e-3)


@pytest.mark.slow
def test_dino_trains_a_timm_resnet_and_exports_it_for_timm(tmp_path):
    quick = [
        "data.batch_size=16",
        "data.limit=64",
        "train.max_steps=3",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    cfg = load_config(
        CONFIGS / "dino/tiny_mnist_resnet.yaml", [*DINO_TINY, *quick, f"run.out_dir={tmp_path}"]
    )
    result = train(cfg)
    assert np.isfinite(result.losses).all()
    exported = load_backbone(result.exported).eval()
    model = timm.create_model(f"local-dir:{result.run_dir / 'export'}", pretrained=True, num_classes=0).eval()
    bn = model.bn1
    assert bn.running_mean.abs().sum() > 0 and not torch.allclose(
        bn.running_var, torch.ones_like(bn.running_var)
    )
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), exported(images))
        cls, tokens = exported.features(images)
    assert cls.shape == (2, 512) and tokens.shape == (2, 1, 512)  # 32 px / stride 32: one feature-map cell


def test_masked_objectives_refuse_a_cnn_in_one_line(tmp_path):
    config = tmp_path / "mae_resnet.yaml"
    config.write_text("model: {kind: cnn, name: resnet18}\nobjective: {name: mae}\n")
    with pytest.raises(ConfigError, match=r"objective 'mae' works with model.kind \['vit'\], not 'cnn'"):
        load_config(config)
    with pytest.raises(
        ConfigError, match="'resnet18' is not a timm VisionTransformer; a CNN is model.kind=cnn"
    ):
        Trainer(tiny_config("mae/tiny_mnist.yaml", tmp_path, "model.name=resnet18"))
