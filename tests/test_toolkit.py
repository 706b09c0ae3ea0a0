"""The shared toolkit every objective builds on: EMA teachers, centring, the self-distillation loss, the
masked-modelling core, parts rebuilt from runs, and configs that load in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from timm.layers import DropPath

from ssl_distill.engine import Trainer, train
from ssl_distill.errors import BackboneLoadError
from ssl_distill.losses import SelfDistillationLoss
from ssl_distill.modules.centering import TeacherCentering
from ssl_distill.modules.ema import EMA, frozen_copy
from ssl_distill.modules.teacher import load_part
from ssl_distill.objectives import Objective
from ssl_distill.registry import OBJECTIVES

from conftest import REPO, tiny_config

DINO_SMALL = ["objective.output_dim=64", "objective.hidden_dim=32", "objective.bottleneck_dim=16", "data.transform.n_local_views=2"]


def dino(tmp_path, *overrides: str):
    torch.manual_seed(0)
    cfg = tiny_config("dino/tiny_mnist.yaml", tmp_path, *DINO_SMALL, *overrides, decoder=False)
    return OBJECTIVES.get("dino")(cfg, 10)


def test_dino_teacher_is_deterministic_with_drop_path_while_the_student_is_not(tmp_path):
    model = dino(tmp_path, "model.drop_path_rate=0.5").train()
    images = torch.randn(4, 3, 32, 32)
    assert model.student.training and not model.teacher.training and not model.teacher_head.training
    with torch.no_grad():
        assert torch.equal(model.teacher(images), model.teacher(images))
        assert not torch.equal(model.student(images), model.student(images))
    drop_paths = [m for m in model.teacher.modules() if isinstance(m, DropPath)]
    assert drop_paths and all(m.drop_prob == 0 for m in drop_paths)


def test_frozen_copy_of_a_weight_normed_head_matches_and_takes_no_gradient():
    torch.manual_seed(0)
    head = DINOProjectionHead(16, 32, 8, 64, batch_norm=True)
    copy = frozen_copy(head)
    x = torch.randn(6, 16)
    head.train()
    torch.testing.assert_close(copy(x), head(x))  # BN on batch statistics, as the official DINO teacher
    assert copy.frozen and not copy.training and all(not p.requires_grad for p in copy.parameters())
    assert not any(p is q for p in head.parameters() for q in copy.parameters())
    copy(x).sum()  # no graph, no error
    head(x).sum().backward()
    assert all(p.grad is None for p in copy.parameters())


def test_ema_moves_every_declared_teacher_by_one_minus_momentum():
    students = [torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)]
    ema = EMA(0.9, 1.0, total_steps=5)
    teachers = [ema.copy(s) for s in students]
    assert ema.teachers == teachers
    assert (ema.momentum(0), ema.momentum(4)) == (pytest.approx(0.9), pytest.approx(1.0))
    with torch.no_grad():
        for s in students:
            s.weight.add_(1.0)
    old = [t.weight.clone() for t in teachers]
    ema.update(2)
    m = ema.momentum(2)
    assert m == pytest.approx(0.95)
    for s, t, t_old in zip(students, teachers, old):
        torch.testing.assert_close(t.weight - t_old, (1 - m) * (s.weight - t_old))


def test_self_distillation_loss_equals_lightly_dino_loss_and_centres_move_only_in_update():
    torch.manual_seed(0)
    teacher = [torch.randn(5, 12) for _ in range(2)]
    students = [torch.randn(5, 12) for _ in range(4)]
    reference = DINOLoss(output_dim=12, teacher_temp=0.05, warmup_teacher_temp=0.05, student_temp=0.1)
    reference.center.data = torch.randn(1, 1, 12) * 0.1
    centering = TeacherCentering(12, momentum=0.9, center_on="logits")
    centering.center.center = reference.center.data[0].clone()
    ours = SelfDistillationLoss(0.1, skip_same_view=True)(centering(torch.stack(teacher), 0.05), torch.stack(students))
    torch.testing.assert_close(ours, reference(teacher, students, teacher_temp=0.05), atol=1e-6, rtol=0)
    assert torch.equal(centering.center.value, reference_center := centering.center.value.clone())
    centering.update()
    torch.testing.assert_close(centering.center.value, reference.center.data[0], atol=1e-6, rtol=0)  # lightly moved it in forward
    assert not torch.equal(centering.center.value, reference_center)
    centering.update()  # nothing pending: no move
    torch.testing.assert_close(centering.center.value, reference.center.data[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least one"):
        SelfDistillationLoss(skip_same_view=True)(torch.rand(1, 2, 3), torch.rand(1, 2, 3))


def test_self_distillation_teachers_are_left_out_of_the_optimizer_and_updated_after_the_step(tmp_path):
    cfg = tiny_config("dino/tiny_mnist.yaml", tmp_path, *DINO_SMALL, "train.max_steps=2", decoder=False)
    trainer = Trainer(cfg)
    objective = trainer.objective
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for teacher in objective.ema.teachers:
        assert not {id(p) for p in teacher.parameters()} & optimized
    before = [p.clone() for p in objective.teacher.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, objective.teacher.parameters()))


def test_masked_modelling_takes_its_channel_count_from_the_model(tmp_path):
    cfg = tiny_config("mae/tiny_mnist.yaml", tmp_path, "model.in_chans=1")
    model = OBJECTIVES.get("mae")(cfg, 1)
    assert model.decoder.predict.out_features == 4 * 4 * 1
    out = model({"views": [torch.randn(2, 1, 32, 32)]}, step=0)
    assert torch.isfinite(out.loss) and out.loss.item() > 0


@pytest.mark.slow
def test_parts_rebuilt_from_a_run_hold_its_trained_weights_and_missing_parts_are_errors(tmp_path):
    result = train(tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=3"))
    decoder = load_part(result.run_dir, "decoder")
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    for name, tensor in decoder.state_dict().items():
        assert torch.equal(tensor, state[f"decoder.{name}"]), name
    assert not decoder.training and all(not p.requires_grad for p in decoder.parameters())
    backbone = load_part(result.run_dir, "backbone")
    assert backbone.spec["depth"] == 2
    with pytest.raises(BackboneLoadError, match="exported backbone only, no 'decoder'"):
        load_part(result.exported, "decoder")
    with pytest.raises(BackboneLoadError, match="no rebuildable part 'head'.*backbone, decoder"):
        load_part(result.run_dir, "head")
    with pytest.raises(BackboneLoadError, match="nothing: no such run directory or checkpoint"):
        load_part(tmp_path / "nothing", "decoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneLoadError, match="no checkpoint_.*needs a training checkpoint"):
        load_part(tmp_path / "empty", "decoder")


@pytest.mark.slow
def test_configs_load_and_validate_in_a_fresh_interpreter():
    code = (
        "from ssl_distill.config import load_config, from_yaml, to_yaml\n"
        "cfg = load_config('configs/discovr/tiny_echo.yaml')\n"
        "assert from_yaml(to_yaml(cfg)) == cfg\n"
        "import sys; assert 'ssl_distill.objectives.discovr' in sys.modules\n"
        "print(cfg.model.kind, cfg.model.num_frames)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["video_vit", "8"]


def test_objective_base_contract():
    assert Objective.model_kinds == {"vit"} and OBJECTIVES.get("videomae").model_kinds == {"video_vit"}
    assert {"mae", "dmae", "dino", "videomae", "discovr"} <= set(OBJECTIVES.names())
