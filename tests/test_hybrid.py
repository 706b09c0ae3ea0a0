"""Hybrid Distillation, reconstructed (docs/methods/hybrid.md): the relation KL's direction in closed form,
gather-then-softmax against slice-then-renormalise, captured q/k against timm's fused attention, redundant
token masking and its schedule, teacher isolation, equality with a from-spec re-implementation written here,
and a tiny end-to-end run from YAML."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from ssl_distill.backbones import ViT, load_backbone
from ssl_distill.engine import Trainer, train
from ssl_distill.errors import ConfigError
from ssl_distill.losses import RelationDistillationLoss, WhitenedSmoothL1Loss
from ssl_distill.modules.attention import QKCapture, relation_logits
from ssl_distill.modules.masking import keep_by_score
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schedules import ramp

from conftest import tiny_config


def hybrid(tmp_path, supervised, mae, *overrides, max_steps: int = 10):
    cfg = tiny_config(
        "hybrid/tiny_mnist.yaml", tmp_path, f"objective.contrastive_teacher.source={supervised}",
        f"objective.mim_teacher.source={mae}", *overrides, decoder=False,
    )
    return OBJECTIVES.get("hybrid")(cfg, max_steps)


# -- relations -------------------------------------------------------------------------------------------


def test_relation_kl_direction_and_invariances():
    teacher = torch.tensor([0.5, 0.5]).log().reshape(1, 1, 1, 2)
    student = torch.tensor([0.9, 0.1]).log().reshape(1, 1, 1, 2)
    kl = RelationDistillationLoss("kl")
    # KL(t || s) = 0.5 ln(0.5 / 0.9) + 0.5 ln(0.5 / 0.1) = 0.5108256; the reverse KL(s || t) would be 0.3680642
    assert kl(teacher, student).item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5), abs=1e-6)
    assert kl(teacher, student).item() == pytest.approx(0.5108256, abs=1e-6)
    assert kl(student, teacher).item() == pytest.approx(0.3680642, abs=1e-6)
    assert kl(teacher, student + 7.0).item() == pytest.approx(0.5108256, abs=1e-6)  # logits up to a row constant
    torch.manual_seed(0)
    q, k = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    logits = relation_logits(q, k, 4)
    assert kl(logits, logits).item() == 0.0
    # the sum runs over keys and the mean over (batch, head, query) rows: 2 queries with KL 0.5108 and 0
    rows_t = torch.stack([teacher[0, 0, 0], teacher[0, 0, 0]]).reshape(1, 1, 2, 2)
    rows_s = torch.stack([student[0, 0, 0], teacher[0, 0, 0]]).reshape(1, 1, 2, 2)
    assert kl(rows_t, rows_s).item() == pytest.approx(0.5108256 / 2, abs=1e-6)
    teacher_logits = logits.clone().requires_grad_(True)
    student_logits = relation_logits(q, k.flip(1), 4).requires_grad_(True)
    kl(teacher_logits, student_logits).backward()
    assert teacher_logits.grad is None and student_logits.grad is not None


def test_gather_then_softmax_equals_slice_then_renormalise():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    keep = torch.tensor([0, 2, 3, 7, 9])  # class token included
    full = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    sliced = full[:, :, keep][:, :, :, keep]
    renormalised = sliced / sliced.sum(-1, keepdim=True)
    gathered = (q[:, :, keep] @ k[:, :, keep].transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    torch.testing.assert_close(gathered, renormalised, rtol=0, atol=1e-6)


def test_captured_qk_reproduce_timms_fused_attention_and_keep_their_graph():
    torch.manual_seed(0)
    vit = ViT(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4)
    block = vit.vit.blocks[1]
    seen = {}
    block.attn.register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
    with QKCapture(vit.vit.blocks, [1]) as capture:
        vit(torch.randn(2, 3, 32, 32))
    assert not block.attn.qkv._forward_hooks  # removed on exit
    q, k = capture.qk[1]
    assert q.shape == (2, 65, 32) and q.requires_grad
    v = block.attn.qkv(seen["x"]).reshape(2, 65, 3, 4, 8)[:, :, 2].transpose(1, 2)
    attention = relation_logits(q, k, 4).softmax(-1)  # the block's own 4 heads
    recomputed = block.attn.proj((attention @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(recomputed, seen["out"], rtol=0, atol=1e-5)


# -- redundant token masking -----------------------------------------------------------------------------


def test_redundant_masking_keeps_the_top_scores_and_follows_its_schedule():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9]])
    assert keep_by_score(scores, 0.5).tolist() == [[0, 2, 4]]  # patches 1 and 3 (+1: sequence indices), class first
    assert keep_by_score(scores, 0.0).tolist() == [[0, 1, 2, 3, 4]]
    torch.manual_seed(0)
    drawn = {tuple(keep_by_score(scores, 0.5, stochastic=True)[0].tolist()) for _ in range(50)}
    assert len(drawn) > 1 and all(len(d) == 3 and d[0] == 0 for d in drawn)
    # linear from 0 to 0.5 over the first half of 100 steps, then flat; cosine and step variants
    assert [ramp(s, 100, 0.0, 0.5, "linear", 0.0, 0.5) for s in (0, 25, 50, 90)] == [0.0, 0.25, 0.5, 0.5]
    assert ramp(25, 100, 0.0, 0.5, "cosine", 0.0, 0.5) == pytest.approx(0.25)
    assert ramp(10, 100, 0.0, 0.5, "cosine", 0.0, 0.5) == pytest.approx(0.25 * (1 - math.cos(math.pi * 0.2)))
    assert [ramp(s, 100, 0.1, 0.5, "step", 0.0, 0.5) for s in (0, 49, 50)] == [0.1, 0.1, 0.5]
    assert ramp(0, 100, 0.1, 0.5, "constant") == 0.5


# -- the objective ---------------------------------------------------------------------------------------


def test_teachers_are_isolated(tmp_path, supervised_teacher, mae_teacher_with_decoder):
    trainer = Trainer(tiny_config(
        "hybrid/tiny_mnist.yaml", tmp_path, f"objective.contrastive_teacher.source={supervised_teacher}",
        f"objective.mim_teacher.source={mae_teacher_with_decoder}", "train.max_steps=2", decoder=False,
    ))
    objective = trainer.objective
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    teachers = [*objective.contrastive_teacher.parameters(), *objective.mim_teacher.parameters()]
    assert teachers and not {id(p) for p in teachers} & optimized
    objective.train()
    assert not objective.contrastive_teacher.training and not objective.mim_teacher.training
    output = objective({"views": [torch.randn(4, 3, 32, 32)]}, step=1)
    output.loss.backward()
    assert all(p.grad is None for p in teachers)
    assert all(p.grad is not None for p in objective.projections.parameters())
    assert not any(k.startswith(("contrastive_teacher.", "mim_teacher.")) for k in objective.state_dict())
    assert output.logs["kept_tokens"] == 1 + int(64 * (1 - output.logs["drop_ratio"]))


def test_relation_heads_must_divide_both_widths(tmp_path, supervised_teacher, mae_teacher_with_decoder):
    with pytest.raises(ConfigError, match="relation_heads=3 does not divide the student's width 32"):
        hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder, "objective.relation_heads=3")
    with pytest.raises(ConfigError, match="objective.relation_distance=l2 is not one of: kl, smooth_l1, mse"):
        hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder, "objective.relation_distance=l2")
    with pytest.raises(ConfigError, match="student_feature_blocks \\[0, 1\\] and teacher_feature_blocks \\[3\\] must pair"):
        hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder, "objective.student_feature_blocks=[0,1]")


def from_spec_loss(objective, supervised, mae, images: torch.Tensor, ratio: float) -> torch.Tensor:
    """The reconstructed objective written out from the spec: plain ViT passes with q, k recomputed from each
    block's LayerNorm'd input, argsort top-K by the supervised teacher's class-token attention, final-norm
    features whitened by LN0 (eps 1e-5) + smooth-L1 beta 2, KL(T || S) summed over keys on relations."""
    contrastive, mim, student = load_backbone(supervised).vit.eval(), load_backbone(mae).vit.eval(), objective.backbone.vit

    def run(vit, keep=None):
        x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        if keep is not None:
            x = torch.stack([x[b, keep[b, 1:] - 1] for b in range(len(x))])
        x = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(len(x), -1, -1), x], dim=1)
        for block in vit.blocks[:-1]:
            x = block(x)
        last = vit.blocks[-1]
        q, k, _ = last.attn.qkv(last.norm1(x)).chunk(3, dim=-1)
        return vit.norm(last(x)), q, k

    def attention(q, k, heads):  # (B, N, C) -> (B, heads, N, N) probabilities
        split = [t.reshape(*t.shape[:2], heads, -1).transpose(1, 2) for t in (q, k)]
        return (split[0] @ split[1].transpose(-2, -1) / math.sqrt(q.shape[-1] // heads)).softmax(-1)

    with torch.no_grad():
        c_out, c_q, c_k = run(contrastive)
        _, m_q, m_k = run(mim)
    scores = attention(c_q, c_k, 4)[:, :, 0, 1:].mean(1)
    kept = scores.argsort(dim=1, descending=True)[:, : int(64 * (1 - ratio))].sort(dim=1).values + 1
    keep = torch.cat([torch.zeros(len(images), 1, dtype=torch.long), kept], dim=1)
    rows = torch.arange(len(images))[:, None]
    s_out, s_q, s_k = run(student, keep)
    target = c_out[rows, keep]
    target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(target.var(-1, unbiased=False, keepdim=True) + 1e-5)
    d = (objective.projections[0](s_out) - target).abs()
    feature = torch.where(d < 2, d**2 / 4, d - 1).mean()
    t = attention(m_q[rows, keep], m_k[rows, keep], 4)
    s = attention(s_q, s_k, 4)
    relation = (t * (t.log() - s.log())).sum(-1).mean()
    return feature + relation


def test_objective_matches_a_from_spec_reimplementation(tmp_path, supervised_teacher, mae_teacher_with_decoder):
    objective = hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder).eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    assert objective.drop_ratio(5) == 0.5  # linear over the first half of 10 steps
    loss = objective({"views": [images]}, step=5).loss
    expected = from_spec_loss(objective, supervised_teacher, mae_teacher_with_decoder, images, 0.5)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert objective({"views": [images]}, step=0).loss.item() == pytest.approx(
        from_spec_loss(objective, supervised_teacher, mae_teacher_with_decoder, images, 0.0).item(), abs=1e-6
    )


def test_nothing_dropped_reproduces_the_unmasked_loss_bit_for_bit(tmp_path, supervised_teacher, mae_teacher_with_decoder):
    objective = hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder).eval()
    images = torch.randn(2, 3, 32, 32)
    teachers = objective.run_teachers(images)
    kept = objective.keep(images, 0.0, teachers)
    assert torch.equal(kept[0], torch.arange(65))
    for masked, unmasked in zip(objective.distill(images, kept, teachers), objective.distill(images, None, teachers)):
        assert torch.equal(masked, unmasked)
    # teachers on the kept tokens only (the DMAE-style switch) agree too when nothing is dropped
    for masked, unmasked in zip(objective.distill(images, kept, None), objective.distill(images, None, teachers)):
        assert torch.equal(masked, unmasked)


def test_cls_switch_and_feature_whitening_eps(tmp_path, supervised_teacher, mae_teacher_with_decoder):
    with_cls = hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder).eval()
    without = hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder, "objective.include_cls=false").eval()
    without.load_state_dict(with_cls.state_dict())
    images = torch.randn(2, 3, 32, 32)
    teachers = with_cls.run_teachers(images)
    assert not torch.equal(with_cls.distill(images, None, teachers)[1], without.distill(images, None, teachers)[1])
    assert with_cls.feature_distance.eps == 1e-5 and isinstance(with_cls.feature_distance, WhitenedSmoothL1Loss)
    with pytest.raises(ConfigError, match="the deepest is 0, so blocks 1..1 of the student would never train"):
        hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder, "objective.student_feature_blocks=[0]", "objective.student_relation_blocks=[0]")
    prenorm = hybrid(tmp_path, supervised_teacher, mae_teacher_with_decoder, "objective.feature_final_norm=false")
    assert not any(p.requires_grad for p in prenorm.backbone.final_norm().parameters())  # unused: frozen


# -- end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trains_from_yaml_with_a_logged_masking_schedule(tmp_path, supervised_teacher, mae_teacher_with_decoder):
    cfg = tiny_config(
        "hybrid/tiny_mnist.yaml", tmp_path, f"objective.contrastive_teacher.source={supervised_teacher}",
        f"objective.mim_teacher.source={mae_teacher_with_decoder}", "train.max_steps=20", "optim.lr=2e-3", decoder=False,
    )
    result = train(cfg)
    assert float(np.mean(result.losses[-4:])) < 0.9 * float(np.mean(result.losses[:4])), result.losses
    with open(result.run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [float(r["drop_ratio"]) for r in rows]
    assert logged == pytest.approx([ramp(s, 20, 0.0, 0.5, "linear", 0.0, 0.5) for s in range(20)])
    assert [int(float(r["kept_tokens"])) for r in rows][-1] == 1 + 32
    assert load_backbone(result.exported).spec["depth"] == 2
