"""G2SD (docs/methods/g2sd.md): the whitened smooth-L1 in closed form, token coverage, the truncated teacher
decoder, the shared mask, the zero-weight branch, the specific-stage loss by hand, equality with a
from-spec re-implementation written here, and tiny end-to-end runs of both stages from YAML."""

from __future__ import annotations

import csv
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.models import utils
from timm.loss import SoftTargetCrossEntropy
from timm.models.vision_transformer import Block

from ssl_distill.backbones import load_backbone
from ssl_distill.checkpoints import newest_checkpoint, read_checkpoint
from ssl_distill.config import objective_class
from ssl_distill.engine import Trainer, train
from ssl_distill.errors import BackboneLoadError, ConfigError
from ssl_distill.losses import HardDistillationLoss, WhitenedSmoothL1Loss
from ssl_distill.modules.classifier import Classifier
from ssl_distill.modules.teacher import FrozenMAETeacher, TeacherConfig, load_part

from conftest import finetune_overrides, tiny_config

DECODER = ["objective.decoder.depth=2", "objective.teacher_decoder_blocks=1"]


def generic(tmp_path, teacher, *overrides):
    cfg = tiny_config("g2sd/tiny_mnist_generic.yaml", tmp_path, f"objective.teacher.source={teacher}", *DECODER, *overrides)
    return objective_class(cfg.objective)(cfg, 10)


# -- the loss --------------------------------------------------------------------------------------------


def test_whitened_smooth_l1_closed_form_and_beta():
    loss = WhitenedSmoothL1Loss(beta=2.0, eps=1e-6)
    teacher = torch.tensor([[[1.0, -1.0]]])
    # LN0([1, -1]) = ±1/sqrt(1 + 1e-6) = ±0.9999995; pred 0: d^2 / (2 beta) = 0.999999 / 4 per element
    assert loss(teacher, torch.zeros(1, 1, 2)).item() == pytest.approx(0.2499998, abs=1e-7)
    # whitening removes a per-token affine map (up to eps)
    assert loss(3 * teacher + 5, torch.zeros(1, 1, 2)).item() == pytest.approx(0.2499998, abs=1e-5)
    # |d| = 3 >= beta: the linear branch |d| - beta / 2 = 2 exactly, which pins beta = 2
    target = F.layer_norm(teacher, (2,), eps=1e-6)
    assert loss(teacher, target + 3).item() == pytest.approx(2.0, abs=1e-6)
    assert WhitenedSmoothL1Loss(beta=1.0)(teacher, target + 3).item() == pytest.approx(2.5, abs=1e-6)


def test_teacher_target_takes_no_gradient():
    teacher = torch.randn(2, 3, 4, requires_grad=True)
    student = torch.randn(2, 3, 4, requires_grad=True)
    WhitenedSmoothL1Loss()(teacher, student).backward()
    assert teacher.grad is None and student.grad is not None


def test_token_coverage_all_tokens_by_default_masked_only_as_switch(tmp_path, mae_teacher_with_decoder):
    objective = generic(tmp_path, mae_teacher_with_decoder)
    idx_keep, _ = utils.random_token_mask((1, 65), 0.75)
    visible = int(idx_keep[0, 1])  # sequence index of a visible patch
    masked = int(objective.masked_tokens(idx_keep)[0].nonzero()[0])  # sequence index of a hidden patch
    teacher, pred = torch.randn(1, 65, 8), torch.randn(1, 65, 8)
    loss = WhitenedSmoothL1Loss()
    for tokens, changes in ((None, {0: True, visible: True, masked: True}), (objective.masked_tokens(idx_keep), {0: False, visible: False, masked: True})):
        base = loss(teacher, pred, tokens)
        for index, should_change in changes.items():
            moved = pred.clone()
            moved[0, index] += 1.0
            assert (loss(teacher, moved, tokens) != base).item() == should_change, (tokens is None, index)


# -- the teacher -----------------------------------------------------------------------------------------


def test_truncated_teacher_equals_the_hooked_full_decoder_and_skips_the_rest(mae_teacher_with_decoder):
    teacher = FrozenMAETeacher.from_run(TeacherConfig(source=str(mae_teacher_with_decoder)), decoder_blocks=1)
    images = torch.randn(3, 3, 32, 32)
    idx_keep, _ = utils.random_token_mask((3, 65), 0.75)
    decoder = load_part(mae_teacher_with_decoder, "decoder")
    hooked = {}
    decoder.decoder.blocks[0].register_forward_hook(lambda m, i, o: hooked.setdefault("x", o))
    with torch.no_grad():
        decoder(teacher.backbone.encode(images, idx_keep).tokens, idx_keep)  # all blocks, norm and pixel head
    ran = []
    for block in teacher.decoder.decoder.blocks:
        block.register_forward_hook(lambda m, i, o: ran.append(m))
    teacher.decoder.decoder.norm.register_forward_hook(lambda m, i, o: ran.append(m))
    targets = teacher(images, idx_keep)
    assert torch.equal(targets.decoder, hooked["x"])
    assert len(ran) == 1  # block 2 of 2, the final norm (and the pixel head after it) never ran
    assert targets.decoder.shape == (3, 65, 32) and targets.encoder.shape == (3, 17, 48)
    assert targets.decoder.mean(dim=-1).abs().max() > 1e-3  # not layer-normed
    assert FrozenMAETeacher.from_run(TeacherConfig(source=str(mae_teacher_with_decoder))).decoder_blocks == 1  # half of 2


def test_a_teacher_without_its_decoder_is_an_error(tmp_path, mae_teacher_with_decoder):
    exported = mae_teacher_with_decoder / "backbone.safetensors"
    with pytest.raises(BackboneLoadError, match="exported backbone only, no 'decoder'"):
        generic(tmp_path, exported)
    with pytest.raises(BackboneLoadError, match="no such run directory"):
        generic(tmp_path, "timm:vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="decoder has 2 blocks; cannot stop after 3"):
        generic(tmp_path, mae_teacher_with_decoder, "objective.teacher_decoder_blocks=3")


def test_one_mask_is_shared_by_teacher_and_student(tmp_path, mae_teacher_with_decoder):
    objective = generic(tmp_path, mae_teacher_with_decoder)
    seen = {}
    teacher_forward, student_encode = objective.teacher.forward, objective.backbone.encode

    def spy_teacher(images, idx_keep):
        seen["teacher"] = idx_keep
        return teacher_forward(images, idx_keep)

    def spy_student(images, idx_keep=None, taps=(), stop=None):
        seen["student"] = idx_keep
        return student_encode(images, idx_keep, taps, stop)

    objective.teacher.forward, objective.backbone.encode = spy_teacher, spy_student
    objective({"views": [torch.randn(4, 3, 32, 32)]}, step=0)
    assert torch.equal(seen["teacher"], seen["student"])
    hidden = objective.masked_tokens(seen["teacher"])[:, 1:].sum(dim=1)
    assert torch.equal(hidden, torch.full((4,), 64 - int(64 * 0.25)))


def test_zero_weight_encoder_branch_gives_exactly_zero_gradient(tmp_path, mae_teacher_with_decoder):
    objective = generic(tmp_path, mae_teacher_with_decoder)
    output = objective({"views": [torch.randn(4, 3, 32, 32)]}, step=0)
    output.loss.backward()
    assert output.logs["encoder_feature"] > 0  # computed and logged
    assert all(torch.all(p.grad == 0) for p in objective.encoder_head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.decoder_head.parameters())
    assert all(p.grad is None for p in objective.teacher.parameters())
    weighted = generic(tmp_path, mae_teacher_with_decoder, "objective.encoder_weight=1.0")
    weighted({"views": [torch.randn(4, 3, 32, 32)]}, step=0).loss.backward()
    assert weighted.encoder_head.fc1.weight.grad.abs().sum() > 0
    assert objective.decoder.predict is None and not list(objective.decoder.decoder.norm.parameters())  # a trunk
    assert not any(k.startswith("teacher.") for k in objective.state_dict())  # rebuilt from its run


def test_generic_stage_matches_a_from_spec_reimplementation(tmp_path, mae_teacher_with_decoder):
    """The modular loss equals a plain re-implementation of the released GD step written here from the spec."""
    objective = generic(tmp_path, mae_teacher_with_decoder).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(7)
    loss = objective({"views": [images]}, step=0).loss

    torch.manual_seed(7)
    noise = torch.rand(2, 65)  # the draw random_token_mask makes (class token pinned first)
    noise[:, 0] = -1
    keep = torch.argsort(noise, dim=1)[:, :17]
    teacher_vit = load_backbone(mae_teacher_with_decoder).vit.eval()
    state = read_checkpoint(newest_checkpoint(mae_teacher_with_decoder))["model"]

    def encode(vit):
        x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        x = torch.gather(x, 1, (keep[:, 1:] - 1)[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
        for block in vit.blocks:
            x = block(x)
        return x, vit.norm(x)  # pre-norm last block output, final-norm latent

    def decode(latent, embed_w, embed_b, mask_token, pos, blocks):
        x = latent @ embed_w.T + embed_b
        tokens = mask_token.expand(2, 65, -1).clone()
        tokens[torch.arange(2)[:, None], keep] = x  # un-shuffle: visible tokens back at their positions
        x = tokens + pos
        for block in blocks:
            x = block(x)
        return x

    def timm_block(prefix, dim, heads):
        block = Block(dim, heads, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        block.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        return block.eval()

    def smooth_l1_beta2(pred, target):
        d = (pred - target).abs()
        return torch.where(d < 2, d**2 / 4, d - 1).mean()

    with torch.no_grad():
        t_pre, t_latent = encode(teacher_vit)
        h_t = decode(
            t_latent, state["decoder.embed.weight"], state["decoder.embed.bias"], state["decoder.decoder.mask_token"],
            state["decoder.decoder.pos_embed"], [timm_block("decoder.decoder.blocks.0.", 32, 2)],
        )
    s_pre, s_latent = encode(objective.backbone.vit)
    d = objective.decoder
    h_s = decode(s_latent, d.embed.weight, d.embed.bias, d.decoder.mask_token, d.decoder.pos_embed, d.decoder.blocks)

    def mlp(head, x):
        return head.fc2(F.gelu(head.fc1(x)))

    def ln0(x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)

    expected = smooth_l1_beta2(mlp(objective.decoder_head, h_s), ln0(h_t))
    expected = expected + 0.0 * smooth_l1_beta2(mlp(objective.encoder_head, s_latent), ln0(t_pre))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


# -- the specific stage ----------------------------------------------------------------------------------


def test_specific_stage_loss_by_hand():
    class_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    dist_logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2])
    teacher_logits = torch.tensor([[0.1, 5.0, -1.0], [0.0, 0.3, 0.4]])  # argmax 1 and 2
    e = math.e
    label_ce = (math.log(1 + 2 / e**2) + math.log(2 + e)) / 2  # -log softmax at the label, per row
    teacher_ce = (math.log(3) + math.log(1 + e**-2 + e**-3)) / 2  # -log softmax at the teacher's argmax
    loss = HardDistillationLoss(torch.nn.CrossEntropyLoss(), alpha=0.5)
    assert loss(class_logits, dist_logits, labels, teacher_logits).item() == pytest.approx(0.5 * (label_ce + teacher_ce), abs=1e-6)
    # with mixup's soft targets the label term is the soft-target cross-entropy
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    soft_ce = -(soft * F.log_softmax(class_logits, dim=-1)).sum(-1).mean().item()
    mixed = HardDistillationLoss(SoftTargetCrossEntropy(), alpha=0.5)(class_logits, dist_logits, soft, teacher_logits)
    assert mixed.item() == pytest.approx(0.5 * (soft_ce + teacher_ce), abs=1e-6)


def test_distillation_token_is_appended_last_without_position_and_heads_average_in_eval():
    from ssl_distill.backbones import ViT

    torch.manual_seed(0)
    classifier = Classifier(ViT(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2), 3, "cls", True)
    seen = {}
    classifier.backbone.vit.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    images = torch.randn(2, 3, 32, 32)
    class_logits, dist_logits = classifier.train()(images)
    assert seen["x"].shape == (2, 1 + 64 + 1, 32)
    assert torch.equal(seen["x"][:, -1], classifier.dist_token[0].expand(2, -1))  # no position added
    assert torch.allclose(classifier.eval()(images), (class_logits + dist_logits) / 2, atol=1e-6)
    assert classifier.head.weight.std() < 1e-3  # MAE's head init, std 2e-5


def test_specific_stage_teacher_is_frozen_and_outside_the_optimizer(tmp_path, finetuned_teacher):
    overrides = [
        *finetune_overrides(tmp_path, "model.embed_dim=32", "model.depth=2", "model.num_heads=2"),
        "objective.pretrained=null", f"objective.teacher.source={finetuned_teacher}", "train.max_steps=2",
    ]
    trainer = Trainer(tiny_config("g2sd/tiny_mnist_specific.yaml", tmp_path, *overrides, decoder=False))
    objective = trainer.objective
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not {id(p) for p in objective.teacher.parameters()} & optimized
    assert id(objective.classifier.dist_token) in optimized
    objective.train()
    assert not objective.teacher.training and not objective.teacher.module.training
    assert not any(k.startswith("teacher.") for k in objective.state_dict())
    objective({"views": [torch.randn(4, 3, 32, 32)], "label": torch.tensor([0, 1, 2, 3])}, step=0).loss.backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    wrong = tiny_config("g2sd/tiny_mnist_specific.yaml", tmp_path, *overrides, "objective.num_classes=5", decoder=False)
    with pytest.raises(ConfigError, match="its head has 10 classes, objective.num_classes is 5"):
        Trainer(wrong)


# -- end to end ------------------------------------------------------------------------------------------


def falls(losses: list[float], factor: float = 0.9, window: int = 4) -> bool:
    return float(np.mean(losses[-window:])) < factor * float(np.mean(losses[:window]))


@pytest.mark.slow
def test_both_stages_train_from_yaml(tmp_path, mae_teacher_with_decoder, finetuned_teacher):
    gd = train(tiny_config(
        "g2sd/tiny_mnist_generic.yaml", tmp_path / "gd", f"objective.teacher.source={mae_teacher_with_decoder}", *DECODER,
        "train.max_steps=20", "optim.lr=2e-3",
    ))
    assert falls(gd.losses), gd.losses
    sd = train(tiny_config(
        "g2sd/tiny_mnist_specific.yaml", tmp_path / "sd",
        *finetune_overrides(tmp_path, "model.embed_dim=32", "model.depth=2", "model.num_heads=2"),
        f"objective.pretrained={gd.run_dir}", f"objective.teacher.source={finetuned_teacher}",
        "train.max_steps=20", "optim.lr=2e-3", "objective.mixup=0", "objective.cutmix=0", decoder=False,
    ))
    assert falls(sd.losses), sd.losses
    with open(sd.run_dir / "metrics.csv") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert int(last["step"]) == 20 and int(last["val_n"]) == 64 and 0 <= float(last["val_top1"]) <= 100
    # the specific stage started from the generic student's encoder
    assert load_backbone(gd.exported).spec == load_backbone(sd.exported).spec
