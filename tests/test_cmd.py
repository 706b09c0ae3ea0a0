"""CMD (cross-level multi-instance distillation): the worked example of the loss in both md modes, the
PyTorch-version trap of the released formula, patch matching, centres, schedules, the Swin backbone and
tiny end-to-end runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_distill.backbones import load_backbone
from ssl_distill.config import load_config, validate
from ssl_distill.engine import train
from ssl_distill.errors import ConfigError
from ssl_distill.losses import CrossLevelDistillationLoss
from ssl_distill.losses.cross_level import (
    legacy_kl_div,
    match_patches,
    multi_instance_divergence,
    region_cross_entropy,
)
from ssl_distill.registry import OBJECTIVES

from conftest import CONFIGS

SMALL_HEADS = ["objective.output_dim=64", "objective.hidden_dim=32", "objective.bottleneck_dim=16", "data.transform.n_local_views=2"]
TINY_VIT = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2"]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.log_every=1", "data.batch_size=16", "data.limit=64"]


def T(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def worked_example():
    """The numeric check of the CMD spec: B=1, K=3, 2 teacher patches, crops 2 global (2 patches) + 1
    local (1 patch), feature dim 2, τ_t = 0.04, τ_s = 0.1, zero centres."""
    t_cls_out = T([[1, 0.2, -0.5], [0.8, 0.4, -0.3]])
    t_region_out = T([[0.9, 0.1, -0.2], [0.1, 0.7, 0], [0.5, 0.5, -0.4], [0, 0.2, 0.6]])
    t_fea = T([[1, 0], [0, 1], [1, 1], [0, 1]])
    s_cls_out = T([[0.6, 0.3, -0.1], [0.2, 0.5, 0.1], [0.4, -0.2, 0.3]])
    s_region_out = T([[0.5, 0.2, 0.1], [0, 0.4, 0.3], [0.3, 0.3, -0.6], [0.1, -0.1, 0.5], [0.2, -0.4, 0.1]])
    s_fea = T([[1, 0.1], [0.2, 1], [1, 0.9], [0.1, 1], [0.9, 0.2]])
    crops = [slice(0, 2), slice(2, 4), slice(4, 5)]
    teacher = (
        F.softmax(t_cls_out / 0.04, -1).reshape(2, 1, 3),
        F.softmax(t_region_out / 0.04, -1).reshape(2, 1, 2, 3),
        t_fea.reshape(2, 1, 2, 2),
    )
    student = (
        [s_cls_out[i : i + 1].clone().requires_grad_() for i in range(3)],
        [s_region_out[c][None].clone().requires_grad_() for c in crops],
        [s_fea[c][None] for c in crops],
    )
    return teacher, student


def test_worked_example_official_legacy_total_is_negative_as_released():
    teacher, student = worked_example()
    terms = CrossLevelDistillationLoss(0.1, md_mode="official_legacy")(*teacher, *student)
    assert float((0.5 * terms.view + 0.5 * terms.region).detach()) == pytest.approx(1.5223916, abs=1e-6)
    assert float(terms.md.detach()) == pytest.approx(-4.5282813, abs=1e-6)
    assert float(terms.loss.detach()) == pytest.approx(-3.0058897, abs=1e-6)
    terms.loss.backward()
    assert all(torch.isfinite(x.grad).all() for x in [*student[0], *student[1]])


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_the_released_kl_div_is_nan_on_current_pytorch_and_the_explicit_formulas_are_finite():
    teacher, student = worked_example()
    view, bag = student[0][1] / 0.1, student[1][1].sum(1) / 0.1  # scaled logits; this bag has a negative entry
    assert (bag < 0).any()
    assert torch.isnan(F.kl_div(view, bag))  # xlogy(target, target) - target * input: the version trap
    assert torch.isfinite(legacy_kl_div(view, bag))
    released = sum(  # the md sum of the released code, on this PyTorch
        F.kl_div(teacher[0][t], teacher[1][t].sum(1)) + F.kl_div(student[0][v] / 0.1, student[1][v].sum(1) / 0.1)
        for t in range(2) for v in range(3) if v != t
    )
    assert torch.isnan(released)
    terms = CrossLevelDistillationLoss(0.1, md_mode="normalized")(*teacher, *student)
    assert torch.isfinite(terms.loss) and float(terms.md.detach()) >= 0
    terms.loss.backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in [*student[0], *student[1]])


def test_legacy_kl_div_masks_non_positive_targets_and_keeps_their_gradient_finite():
    x = torch.tensor([[0.3, -0.2, 0.5]], requires_grad=True)
    target = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    value = legacy_kl_div(x, target)
    assert float(value.detach()) == pytest.approx((2.0 * (np.log(2.0) - 0.3)) / 3, abs=1e-6)
    value.backward()
    assert torch.isfinite(target.grad).all() and target.grad[0, 1:].abs().sum() == 0


def test_normalized_md_is_a_divergence_zero_when_the_bag_equals_the_view():
    logits = torch.randn(4, 7)
    same = multi_instance_divergence(logits, logits[:, None].expand(-1, 5, -1), "normalized", 0.1)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    other = multi_instance_divergence(logits, torch.randn(4, 5, 7), "normalized", 0.1)
    assert float(other) > 0
    with pytest.raises(ValueError, match="md_mode must be one of"):
        multi_instance_divergence(logits, logits[:, None], "kl")


def test_patch_matching_takes_the_argmax_cosine_teacher_patch_not_the_dot_product():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 6, 8), torch.randn(3, 5, 8) * torch.rand(3, 5, 1) * 10
    expected = torch.stack([
        torch.tensor([max(range(5), key=lambda j: float(F.cosine_similarity(s, t[j], dim=0))) for s in ss])
        for ss, t in zip(student, teacher)
    ])
    assert torch.equal(match_patches(student, teacher), expected)
    # a long teacher vector wins a dot product but not the cosine
    s, t = T([[[1.0, 0.0]]]), T([[[1.0, 0.0], [10.0, 10.0]]])
    assert int(match_patches(s, t)) == 0 and int((s @ t.transpose(1, 2)).argmax()) == 1


def test_region_term_distils_each_student_patch_from_its_matched_teacher_patch():
    torch.manual_seed(0)
    teacher_probs = F.softmax(torch.randn(2, 4, 6), -1)
    teacher_feats, student_feats, student_logits = torch.randn(2, 4, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 6)
    index = match_patches(student_feats, teacher_feats)
    manual = torch.stack([
        -(teacher_probs[b, index[b, i]] * F.log_softmax(student_logits[b, i] / 0.1, -1)).sum()
        for b in range(2)
        for i in range(5)
    ]).mean()
    torch.testing.assert_close(region_cross_entropy(teacher_probs, teacher_feats, student_logits, student_feats, 0.1), manual)


def cmd(tmp_path, config="cmd/tiny_shapes_fine.yaml", *overrides: str, steps: int = 10):
    cfg = load_config(CONFIGS / config, [*SMALL_HEADS, *QUIET, f"run.out_dir={tmp_path}", *overrides])
    torch.manual_seed(0)
    return OBJECTIVES.get("cmd")(cfg, steps)


def batch(views: int = 4, size: int = 32, local: int = 16, b: int = 4) -> dict:
    torch.manual_seed(1)
    return {"views": [torch.randn(b, 3, size, size) for _ in range(2)] + [torch.randn(b, 3, local, local) for _ in range(views - 2)]}


def test_view_and_region_centres_are_separate_and_move_once_per_step(tmp_path):
    model = cmd(tmp_path, "cmd/tiny_shapes_fine.yaml", *TINY_VIT)
    inputs = batch()
    with torch.no_grad():
        globals_ = torch.cat(inputs["views"][:2])
        _, tokens = model.teacher.features(globals_)
        view_logits = model.teacher_head(tokens.mean(1))
        region_logits = model.teacher_region_head(tokens.flatten(0, 1))
    model(inputs, step=0)
    assert torch.count_nonzero(model.center.center.value) == 0 and torch.count_nonzero(model.region_center.center.value) == 0
    model.after_step(0)
    torch.testing.assert_close(model.center.center.value, 0.1 * view_logits.mean(0, keepdim=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.region_center.center.value, 0.1 * region_logits.mean(0, keepdim=True), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(model.center.center.value, model.region_center.center.value)


def test_schedules_teacher_temperature_warmup_and_ema_cosine(tmp_path):
    model = cmd(tmp_path, "cmd/tiny_shapes_fine.yaml", *TINY_VIT, "objective.momentum_start=0.996", steps=100)
    assert model.teacher_temperature(0) == pytest.approx(0.04)
    assert model.teacher_temperature(10) == pytest.approx(0.07)  # warmup over 10% of the steps
    assert model.teacher_temperature(5) == pytest.approx(0.055)
    momenta = [model.ema.momentum(s) for s in range(100)]
    assert momenta[0] == pytest.approx(0.996) and all(b >= a for a, b in zip(momenta, momenta[1:]))
    assert momenta[50] == pytest.approx(1 - 0.002 * (1 + np.cos(np.pi * 50 / 99)), abs=1e-9)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="view_token=cls needs a class token"):
        cmd(tmp_path, "cmd/tiny_swin_shapes_fine.yaml", "objective.view_token=cls")
    with pytest.raises(ConfigError, match="objective.md_mode=kl is not one of: official_legacy, normalized"):
        cmd(tmp_path, "cmd/tiny_shapes_fine.yaml", *TINY_VIT, "objective.md_mode=kl")
    swin = {"kind": "swin", "img_size": 32, "patch_size": 2, "depths": [2], "num_heads": [2], "window_size": 4}
    for name, kinds in (("mae", "'vit'"), ("dino", "'cnn', 'vit'")):
        with pytest.raises(ConfigError, match=f"objective '{name}' works with model.kind \\[{kinds}\\], not 'swin'"):
            validate({"model": swin, "objective": {"name": name}})
    assert validate({"model": swin, "objective": {"name": "cmd"}}).model.kind == "swin"


@pytest.mark.parametrize("config", ["cmd/tiny_shapes_fine.yaml", "cmd/tiny_swin_shapes_fine.yaml"])
def test_one_step_on_both_backbones_and_both_view_tokens(tmp_path, config):
    extra = TINY_VIT if "swin" not in config else ["model.embed_dim=16"]
    for token in ("mean", "cls") if "swin" not in config else ("mean",):
        model = cmd(tmp_path, config, *extra, f"objective.view_token={token}")
        out = model(batch(), step=0)
        assert torch.isfinite(out.loss) and {"view", "region", "md", "md_teacher"} <= set(out.logs)
        out.loss.backward()
        assert model.student_region_head.layers[0].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cmd/tiny_shapes_fine.yaml", "cmd/tiny_swin_shapes_fine.yaml"])
def test_tiny_cmd_runs_learn(tmp_path, config):
    extra = TINY_VIT if "swin" not in config else ["model.embed_dim=16"]
    cfg = load_config(CONFIGS / config, [
        *QUIET, *extra, f"run.out_dir={tmp_path}", "train.max_steps=30", "optim.lr=2e-3",
        "objective.output_dim=256", "objective.hidden_dim=64", "data.transform.n_local_views=2",
    ])
    result = train(cfg)
    losses = result.losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.95 * np.mean(losses[:4]), losses
    backbone = load_backbone(result.exported).eval()
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    teacher = OBJECTIVES.get("cmd")(cfg, 30)
    teacher.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone(images), teacher.teacher.eval()(images))
