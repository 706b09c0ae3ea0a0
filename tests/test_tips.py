"""TIPS: loss check values (tips.md §8, float64), the text tower's padding, the two-class-token ViT, a tiny run."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_distill.backbones import build_backbone, load_backbone
from ssl_distill.backbones.text import timing_signal
from ssl_distill.backbones.tokenizer import Tokenizer
from ssl_distill.config import load_config
from ssl_distill.losses import ImageTextContrastiveLoss, MaskedPatchDistillationLoss, SelfDistillationLoss

from conftest import CONFIGS

TINY_TIPS = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "objective.text.depth=1", "objective.text.num_heads=2",
    "objective.output_dim=64", "objective.hidden_dim=32", "objective.bottleneck_dim=16", "data.limit=64",
    "data.batch_size=16", "data.transform.n_local_views=2", "data.options.context_length=16",
    "train.progress=false", "train.tensorboard=false", "train.log_every=1",
]


def tips_config(out, *overrides: str):
    return load_config(CONFIGS / "tips" / "tiny_shapes.yaml", [*TINY_TIPS, f"run.out_dir={out}", *overrides])


def test_contrastive_loss_check_values():
    loss = ImageTextContrastiveLoss()
    eye = torch.eye(2, dtype=torch.float64)
    swapped = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert loss(eye, eye, 1.0).item() == pytest.approx(0.3132617, abs=1e-7)
    assert loss(eye, eye, 0.1).item() == pytest.approx(4.5399e-05, rel=1e-4)
    assert loss(eye, swapped, 1.0).item() == pytest.approx(1.3132617, abs=1e-7)
    assert (loss(eye, eye, 1.0) + loss(eye, swapped, 1.0)).item() == pytest.approx(1.6265234, abs=1e-7)


def test_dino_loss_check_values():
    uniform = torch.full((1, 1, 4), 0.25, dtype=torch.float64)
    loss = SelfDistillationLoss(student_temp=0.1, skip_same_view=False)
    assert loss(uniform, torch.zeros(1, 1, 4, dtype=torch.float64)).item() == pytest.approx(math.log(4), abs=1e-12)
    peaked = torch.tensor([[[2.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    assert loss(uniform, peaked).item() == pytest.approx(15.0000000062, abs=1e-9)


def test_ibot_loss_is_a_per_image_mean_and_ignores_visible_patches():
    loss = MaskedPatchDistillationLoss(student_temp=1.0)
    mask = torch.tensor([[True, False, False], [True, True, False], [False, False, False]])
    k = 2
    # per-token CE with a one-hot teacher and student log-probs chosen to give 1.0, 3.0, 3.0
    teacher = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    logits = torch.tensor([[0.0, math.log(math.e - 1)], [0.0, math.log(math.e**3 - 1)], [0.0, math.log(math.e**3 - 1)]], dtype=torch.float64)
    assert loss(teacher, logits, mask).item() == pytest.approx(2.0, abs=1e-12)  # not 7 / 3
    full_student = torch.randn(3, 3, k, dtype=torch.float64)
    full_teacher = torch.softmax(torch.randn(3, 3, k, dtype=torch.float64), -1)
    before = loss(full_teacher[mask], full_student[mask], mask)
    full_student[~mask] = torch.randn(int((~mask).sum()), k, dtype=torch.float64)
    assert loss(full_teacher[mask], full_student[mask], mask).item() == before.item()


def test_timing_signal_uses_sin_and_cos_halves():
    table = timing_signal(3, 4).double()
    expected = torch.tensor([math.sin(1), 1e-4, math.cos(1), 1.0], dtype=torch.float64)
    assert torch.allclose(table[1], expected, atol=1e-6)


def _text_tower(context: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    tokenizer = Tokenizer("clip", context_length=context)
    return build_backbone({"kind": "text", "width": 32, "depth": 2, "num_heads": 2, "dropout": 0.0, "attn_dropout": 0.0},
                          tokenizer=tokenizer.spec).eval()


def test_text_mean_pool_excludes_pad_tokens():
    tower = _text_tower(32)
    ids, mask = tower.tokenizer.encode(["a small red disk in the top left"])
    with torch.no_grad():
        short = tower(ids[:, :8], mask[:, :8])
        padded = tower(ids, mask)
        other_pads = tower(ids.masked_fill(~mask, 7), mask)
    assert torch.allclose(short, padded, atol=1e-6)
    assert torch.allclose(padded, other_pads, atol=1e-6)  # pad ids never reach the output


def test_padding_masks_are_per_item():
    tokenizer = Tokenizer("clip", context_length=6)
    ids, mask = tokenizer.encode(["disk", "a very long caption that runs past the context length of six tokens"])
    assert mask.sum(1).tolist() == [1, 6]  # the long row does not reset the short row's mask (official bug)
    assert ids[0, 1:].eq(0).all()


def test_two_class_token_vit_shapes_and_mask_token():
    backbone = build_backbone({"kind": "vit", "img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
                              reg_tokens=1).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = backbone.forward_features(images)
    assert tokens.shape == (2, 66, 32) and backbone.num_prefix_tokens == 2
    cls, patches = backbone.features(images)
    assert cls.shape == (2, 32) and patches.shape == (2, 64, 32)
    assert torch.equal(backbone.representations(images)["cls2"], tokens[:, 1])
    keep = torch.tensor([[0, 1, 2, 9]] * 2)  # idx_keep: the prefix tokens first, then patches 0 and 7
    assert torch.equal(backbone.embed(images, keep), backbone.embed(images)[:, [0, 1, 2, 9]])
    embedded = backbone.embed(images, patch_mask=torch.ones(2, 64, dtype=torch.bool))
    before_positions = embedded[:, 2:] - backbone.vit.pos_embed[:, 2:]
    assert torch.allclose(before_positions, backbone.encoder.mask_token.expand(2, 64, -1), atol=1e-6)


def test_teacher_is_an_ema_of_the_image_tower_only(tmp_path):
    from ssl_distill.objectives.tips import TIPS

    objective = TIPS(tips_config(tmp_path), 10)
    teacher_params = {id(p) for t in objective.ema.teachers for p in t.parameters()}
    assert not teacher_params & {id(p) for p in objective.text_tower.parameters()}
    assert all(student is not objective.text_tower for student, _ in objective.ema.pairs)
    objective.ema.start = objective.ema.end = 0.5
    with torch.no_grad():
        for p in objective.teacher.parameters():
            p.fill_(0.0)
        for p in objective.student.parameters():
            p.fill_(2.0)
    objective.ema.update(0)
    assert all(torch.all(p == 1.0) for p in objective.teacher.parameters())


@pytest.mark.slow
def test_tiny_tips_run_learns_exports_both_towers_and_evaluates(tmp_path):
    from eval.api import run_protocol
    from ssl_distill.engine import train

    result = train(tips_config(tmp_path, "train.max_steps=16", "optim.lr=1e-3"))
    assert sum(result.losses[-4:]) < sum(result.losses[:4])
    image = load_backbone(result.run_dir / "backbone.safetensors").eval()
    text = load_backbone(result.run_dir / "text.safetensors").eval()
    assert image.num_prefix_tokens == 2 and text.tokenizer.context_length == 16
    cfg_tokens = result.run_dir / "metrics.csv"
    assert "contrastive_2" in cfg_tokens.read_text() and "ibot" in cfg_tokens.read_text()
    overrides = ["data.limit=40", "run.progress=false", "run.cache=false"]
    zeroshot, _ = run_protocol("zeroshot", str(result.run_dir / "backbone.safetensors"), "shapes_text", overrides, write=False)
    assert zeroshot.rows[0]["n"] == 40 and 0.0 <= zeroshot.metrics["top1"] <= 1.0
    retrieval, _ = run_protocol("text_retrieve", str(result.run_dir / "backbone.safetensors"), "shapes_text",
                                [*overrides, "text_retrieve.caption=synthetic", "text_retrieve.pooling=cls2"], write=False)
    assert retrieval.rows[0]["n"] == 40


def test_tips_needs_an_image_text_dataset(tmp_path):
    from omegaconf import OmegaConf

    from ssl_distill.errors import ConfigError
    from ssl_distill.objectives.tips import TIPS

    cfg = tips_config(tmp_path)
    cfg.data.name, cfg.data.options = "shapes", OmegaConf.create({})  # what validation gives for `shapes`
    with pytest.raises(ConfigError, match="image-text"):
        TIPS(cfg, 4)


@pytest.mark.parametrize("config", sorted(p.relative_to(CONFIGS).as_posix() for d in ("tips", "mrdd") for p in (CONFIGS / d).glob("*.yaml")))
def test_every_tips_and_mrdd_config_validates(config):
    cfg = load_config(CONFIGS / config)
    assert cfg.objective.name in ("tips", "mrdd")
