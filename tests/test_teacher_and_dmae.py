"""Frozen teacher (partial execution, no gradient, not checkpointed) and DMAE's wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightly.models import utils

from ssl_distill.backbones import ViT, load_backbone
from ssl_distill.engine import Trainer
from ssl_distill.modules.teacher import FrozenTeacher
from ssl_distill.objectives import Objective

from conftest import tiny_config


def tiny_vit(depth: int = 4) -> ViT:
    torch.manual_seed(0)
    return ViT("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=depth, num_heads=2)


def test_stopped_teacher_equals_full_run_at_the_tap():
    backbone = tiny_vit(depth=6).eval()
    images = torch.randn(3, 3, 32, 32)
    idx_keep, _ = utils.random_token_mask((3, 65), 0.75)
    hooked = {}
    handle = backbone.vit.blocks[3].register_forward_hook(lambda m, i, o: hooked.setdefault("x", o))
    with torch.no_grad():
        backbone.encode(images, idx_keep)  # full run, all 6 blocks and the final norm
    handle.remove()
    teacher = FrozenTeacher(backbone, taps=[3])
    ran = []
    for block in backbone.vit.blocks:
        block.register_forward_hook(lambda m, i, o: ran.append(m))
    assert torch.equal(teacher(images, idx_keep)[3], hooked["x"])
    assert len(ran) == 4  # blocks 4 and 5 never ran


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = FrozenTeacher(tiny_vit(), taps=[2])
    holder = Objective(None, 1)
    holder.teacher = teacher
    holder.train()  # the objective keeps every `frozen` module in eval mode
    assert holder.training and not teacher.training and not teacher.backbone.training
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(1, 3, 32, 32))[2]
    assert not out.requires_grad
    assert teacher.state_dict() == {}  # rebuilt from its source, not stored in checkpoints


def test_dmae_teacher_has_no_gradient_or_optimizer_state_and_shares_the_mask(tmp_path, mae_teacher):
    cfg = tiny_config("dmae/tiny_mnist.yaml", tmp_path, f"objective.teacher.source={mae_teacher}", "train.max_steps=2")
    trainer = Trainer(cfg)
    objective = trainer.objective
    teacher_params = {id(p) for p in objective.teacher.parameters()}
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert teacher_params and not teacher_params & optimized
    seen = {}
    teacher_forward = objective.teacher.forward
    student_encode = objective.backbone.encode

    def spy_teacher(images, idx_keep=None):
        seen["teacher"] = idx_keep
        return teacher_forward(images, idx_keep)

    def spy_student(images, idx_keep=None, taps=(), stop=None):
        seen["student"] = idx_keep
        return student_encode(images, idx_keep, taps, stop)

    objective.teacher.forward = spy_teacher
    objective.backbone.encode = spy_student
    batch = {"views": [torch.randn(4, 3, 32, 32)]}
    output = objective(batch, step=0)
    output.loss.backward()
    assert torch.equal(seen["teacher"], seen["student"])
    assert seen["teacher"].shape == (4, 1 + int(64 * 0.25))
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert objective.adapters[0].weight.grad is not None
    assert objective.student_blocks == [0] and objective.teacher_blocks == [2]  # 3/4 of depth 2 and 4
    assert objective.teacher.stop == 3  # blocks after the tap are skipped


def test_dmae_matches_a_from_spec_reimplementation(tmp_path, mae_teacher):
    """The modular loss equals a plain re-implementation of the method (docs/methods/dmae.md) written here."""
    cfg = tiny_config("dmae/tiny_mnist.yaml", tmp_path, f"objective.teacher.source={mae_teacher}", "train.max_steps=2")
    objective = Trainer(cfg).objective.eval()
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(7)
    loss = objective({"views": [images]}, step=0).loss

    torch.manual_seed(7)
    noise = torch.rand(2, 65)  # the same draw random_token_mask makes
    noise[:, 0] = -1
    keep = torch.argsort(noise, dim=1)[:, :17]
    teacher = load_backbone(mae_teacher).eval()

    def run(vit, stop):
        x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        x = torch.gather(x, 1, (keep[:, 1:] - 1)[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
        taps = []
        for block in vit.blocks[:stop]:
            x = block(x)
            taps.append(x)
        return x, taps

    with torch.no_grad():
        t_tap = run(teacher.vit, 3)[1][2]
    student = objective.backbone.vit
    x, s_taps = run(student, len(student.blocks))
    latent = student.norm(x)
    pred = objective.decoder(latent, keep)
    target = utils.patchify(images, 4)
    mask = torch.ones(2, 64).scatter_(1, keep[:, 1:] - 1, 0.0)
    rec = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    feat = (F.normalize(t_tap, dim=-1) - F.normalize(objective.adapters[0](s_taps[0]), dim=-1)).abs().mean()
    assert loss.item() == pytest.approx((rec + feat).item(), abs=1e-6)
