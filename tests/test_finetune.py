"""Supervised fine-tuning (docs/methods/finetune.md) and the trainer's validation door: MAE's layer-wise lr
decay, lr scales applied per step, validation top-1 logged with its count at `eval_every` and at the end,
exact resume across validations, `ssl-eval report` showing it, and clear errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from ssl_distill.backbones import load_backbone
from ssl_distill.config import validate
from ssl_distill.engine import Trainer, train
from ssl_distill.errors import ConfigError
from ssl_distill.registry import OBJECTIVES

from conftest import REPO, finetune_overrides, tiny_config


def finetune_config(tmp_path, *overrides):
    return tiny_config("finetune/tiny_mnist.yaml", tmp_path, *finetune_overrides(tmp_path, "objective.pretrained=null", *overrides), decoder=False)


def rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def mae_layer_id(name: str, depth: int) -> int:
    """MAE's `util/lr_decay.py::get_layer_id_for_vit`, written out."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def test_layer_decay_follows_maes_param_groups(tmp_path):
    objective = OBJECTIVES.get("finetune")(finetune_config(tmp_path, "objective.layer_decay=0.5"), 10)
    groups = objective.param_groups(0.05)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    depth = 4
    for name, param in objective.backbone.vit.named_parameters():
        if param.requires_grad:
            assert scale[id(param)] == 0.5 ** (depth + 1 - mae_layer_id(name, depth)), name
            assert decay[id(param)] == (0.0 if param.ndim == 1 or name in ("cls_token", "pos_embed") else 0.05), name
    head = objective.classifier.head
    assert scale[id(head.weight)] == scale[id(head.bias)] == 1.0 and decay[id(head.bias)] == 0.0
    assert id(objective.backbone.vit.pos_embed) in scale  # learned while fine-tuning, as in MAE
    assert all(g["apply_wd_schedule"] == (g["weight_decay"] > 0) for g in groups)
    trainer = Trainer(finetune_config(tmp_path, "objective.layer_decay=0.5", "train.max_steps=4"))
    lr = trainer._set_schedules(2)
    assert lr > 0 and all(g["lr"] == pytest.approx(lr * g["lr_scale"]) for g in trainer.optimizer.param_groups)


def test_pretrained_encoder_is_loaded_and_must_match_the_model(tmp_path, mae_teacher_with_decoder):
    objective = OBJECTIVES.get("finetune")(finetune_config(tmp_path, f"objective.pretrained={mae_teacher_with_decoder}"), 1)
    teacher = load_backbone(mae_teacher_with_decoder)
    for (name, ours), theirs in zip(objective.backbone.vit.state_dict().items(), teacher.vit.state_dict().values()):
        assert torch.equal(ours, theirs), name
    with pytest.raises(ConfigError, match="its encoder differs from model.* .*embed_dim: 48 there, 32 here"):
        OBJECTIVES.get("finetune")(finetune_config(tmp_path, f"objective.pretrained={mae_teacher_with_decoder}", "model.embed_dim=32"), 1)


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="records validation top-1: set data.val_split"):
        OBJECTIVES.get("finetune")(finetune_config(tmp_path, "data.val_split=null"), 1)
    with pytest.raises(ConfigError, match="data.batch_size=15: mixup/cutmix pair images, it must be even"):
        OBJECTIVES.get("finetune")(finetune_config(tmp_path, "data.batch_size=15"), 1)
    with pytest.raises(ConfigError, match="missing required value for 'objective.num_classes'"):
        validate({"objective": {"name": "finetune"}, "data": {"val_split": "val"}})
    with pytest.raises(ConfigError, match="objective.stage must be one of .*got 'both'"):
        tiny_config("g2sd/tiny_mnist_generic.yaml", tmp_path, "objective.stage=both")


@pytest.mark.slow
def test_validation_is_logged_with_its_count_and_resume_stays_exact(tmp_path):
    """Validated at steps 3 and 6; stopped at 4 and resumed == uninterrupted (mixup draws from numpy)."""
    common = ["train.max_steps=6", "train.eval_every=3", "optim.lr=1e-3", "data.transform.auto_augment=rand-m9-mstd0.5-inc1"]
    full = train(finetune_config(tmp_path / "a", *common))
    logged = rows(full.run_dir)
    validated = [(int(r["step"]), int(r["val_n"])) for r in logged if r["val_top1"]]
    assert validated == [(3, 64), (6, 64)]
    assert [int(r["step"]) for r in logged] == list(range(1, 7))  # merged into the step's row
    first = train(finetune_config(tmp_path / "b", *common, "train.checkpoint_every=4"), stop_at=4)
    second = train(finetune_config(tmp_path / "b", *common, "train.checkpoint_every=4"))
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)
    assert [r["val_top1"] for r in rows(second.run_dir)] == [r["val_top1"] for r in logged]
    quiet = train(finetune_config(tmp_path / "c", *common[:1], *common[2:]))  # eval_every 0: at the end only
    np.testing.assert_allclose(quiet.losses, full.losses, rtol=0, atol=1e-6)  # validating moves no RNG
    assert [int(r["step"]) for r in rows(quiet.run_dir) if r.get("val_top1")] == [6]


@pytest.mark.slow
def test_report_shows_validation_top1(tmp_path):
    from eval.report import build_report

    result = train(finetune_config(tmp_path, "train.max_steps=2"))
    build_report(result.run_dir)
    markdown = (result.run_dir / "report" / "report.md").read_text()
    table = markdown.split("## Validation during training")[1].split()
    assert table[:7] == ["|", "step", "|", "val_top1", "|", "val_n", "|"]
    last = rows(result.run_dir)[-1]
    assert table[-7:] == ["|", "2", "|", f"{float(last['val_top1']):.4f}", "|", "64", "|"]


@pytest.mark.slow
def test_fine_tuning_fits_its_training_digits(tmp_path):
    """Labels, head, optimizer and the eval-mode classifier are wired together: 150 steps on 64 digits
    (validated on those same 64) end far above chance. Tiny ViTs learn held-out MNIST slowly from scratch
    (about 25% after 120 steps), so held-out accuracy is left to the benchmark."""
    cfg = tiny_config(
        "finetune/tiny_mnist_scratch.yaml", tmp_path, "data.limit=64", "data.val_split=train", "data.val_limit=64",
        "train.max_steps=150", "optim.lr=3e-3", "objective.mixup=0", "objective.cutmix=0", "objective.label_smoothing=0",
        "model.drop_path_rate=0", "data.transform.min_scale=1.0", "data.transform.auto_augment=null", "data.transform.re_prob=0",
        decoder=False,
    )
    result = train(cfg)
    last = rows(result.run_dir)[-1]
    assert int(last["val_n"]) == 64
    assert float(last["val_top1"]) > 50.0, last  # chance is 10%; measured 77%


def test_randaugment_posterize_at_full_magnitude_gives_black_as_before_pillow_10():
    from omegaconf import OmegaConf
    from PIL import Image

    from ssl_distill.data.transforms import FineTuneViewConfig, build_transform

    transform = build_transform(OmegaConf.structured(FineTuneViewConfig))
    ops = [op for step in transform.__closure__[0].cell_contents.transforms for op in getattr(step, "ops", ())]
    posterize = [op for op in ops if op.name.startswith("Posterize")]
    assert posterize, [op.name for op in ops]
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert posterize[0].aug_fn(image, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert posterize[0].aug_fn(image, 1).getpixel((0, 0)) == (128, 0, 0)


@pytest.mark.parametrize(
    "config, stage_class",
    [
        ("finetune/tiny_mnist.yaml", "FineTune"),
        ("finetune/tiny_mnist_scratch.yaml", "FineTune"),
        ("finetune/vitb_imagenet.yaml", "FineTune"),
        ("mae/vitb_imagenet.yaml", "MAE"),
        ("g2sd/tiny_mnist_generic.yaml", "G2SDGeneric"),
        ("g2sd/tiny_mnist_specific.yaml", "G2SDSpecific"),
        ("g2sd/vits_imagenet_generic.yaml", "G2SDGeneric"),
        ("g2sd/vits_imagenet_specific.yaml", "G2SDSpecific"),
        ("hybrid/tiny_mnist.yaml", "Hybrid"),
        ("hybrid/vitb_imagenet.yaml", "Hybrid"),
    ],
)
def test_configs_validate_pick_their_stage_and_round_trip(config, stage_class):
    from ssl_distill.config import from_yaml, load_config, objective_class, to_yaml

    cfg = load_config(REPO / "configs" / config)
    assert objective_class(cfg.objective).__name__ == stage_class
    assert from_yaml(to_yaml(cfg)) == cfg  # a saved run config rebuilds the same stage
