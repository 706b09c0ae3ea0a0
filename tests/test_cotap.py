"""CoTAP (reconstruction): the continuous-target AP loss against standard AP and the spec's worked
examples, its rank-focused gradient, the object-aware filter, continuous targets, the EMA prototypes,
nearest-neighbour partners, and a tiny DINO -> knn-pairs -> CoTAP pipeline."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from eval.api import run_protocol
from ssl_distill.backbones import load_backbone
from ssl_distill.config import load_config
from ssl_distill.engine import train
from ssl_distill.errors import BackboneLoadError, ConfigError
from ssl_distill.losses import ContinuousAPLoss
from ssl_distill.losses.ranking import continuous_average_precision, ideal_average_precision
from ssl_distill.modules.object_filter import ObjectAwareFilter
from ssl_distill.modules.teacher import load_part_into
from ssl_distill.objectives.cotap import continuous_targets
from ssl_distill.registry import OBJECTIVES

from conftest import CONFIGS

HARD = 1e-5  # a rank temperature small enough for a hard step on these gaps
TINY = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "data.batch_size=16", "data.limit=64",
    "train.progress=false", "train.tensorboard=false", "train.log_every=1",
    "objective.output_dim=64", "objective.hidden_dim=32", "objective.bottleneck_dim=16",
    "objective.patch_hidden_dim=32", "objective.patch_dim=16", "objective.num_prototypes=8",
]


def rows(*values) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def test_binary_targets_give_standard_average_precision():
    scores, targets = rows(0.9, 0.8, 0.7, 0.6, 0.5), rows(1, 0, 1, 0, 1)
    expected = average_precision_score([1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5])
    assert expected == pytest.approx(0.7555556, abs=1e-7)
    assert float(continuous_average_precision(scores, targets, HARD)) == pytest.approx(expected, abs=1e-6)
    assert float(ContinuousAPLoss(HARD)(scores, targets)) == pytest.approx(1 - expected, abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        s, y = rng.permutation(12) / 12, rng.integers(0, 2, 12)
        y[0] = 1
        ours = continuous_average_precision(torch.tensor(s)[None], torch.tensor(y, dtype=torch.float32)[None], HARD)
        assert float(ours) == pytest.approx(average_precision_score(y, s), abs=1e-6)


def test_continuous_worked_example():
    scores, targets = rows(0.1, 0.9, 0.5, 0.3), rows(1, 0.6, 0.2, 0)
    assert float(continuous_average_precision(scores, targets, HARD)) == pytest.approx(0.4944444, abs=1e-6)
    assert float(continuous_average_precision(scores, targets, 0.01)) == pytest.approx(0.4944444, abs=1e-6)
    assert float(continuous_average_precision(scores, targets, 0.1)) == pytest.approx(0.4978867, abs=1e-6)
    assert float(ideal_average_precision(targets)) == pytest.approx(0.8888889, abs=1e-6)
    normalized = ContinuousAPLoss(0.01, normalize=True)(scores, targets)
    assert float(normalized) == pytest.approx(1 - 0.4944444 / 0.8888889, abs=1e-6)


def test_ordering_by_target_maximises_continuous_ap():
    rng = np.random.default_rng(0)
    for _ in range(200):
        length = int(rng.integers(3, 6))
        targets = torch.tensor(rng.random(length).round(2), dtype=torch.float32)
        orders = torch.tensor(list(itertools.permutations(range(length))), dtype=torch.float32)
        aps = continuous_average_precision(-orders, targets.expand(len(orders), -1), HARD)  # rank r -> score -r
        by_target = torch.argsort(torch.argsort(-targets, stable=True)).float()
        best = continuous_average_precision(-by_target[None], targets[None], HARD)
        assert float(best) >= float(aps.max()) - 1e-6
        assert float(best) == pytest.approx(float(ideal_average_precision(targets[None])), abs=1e-6)


def test_ranking_gradient_concentrates_at_the_top_of_the_list():
    scores = torch.linspace(1, 0, 20)[None].requires_grad_()
    targets = (torch.arange(20) % 2 == 0).float()[None]
    ContinuousAPLoss(0.05)(scores, targets).backward()
    magnitude = scores.grad.abs()[0]
    assert magnitude[:5].mean() > 3 * magnitude[-5:].mean()
    assert all(a >= b for a, b in zip(magnitude[0::2], magnitude[2::2]))  # along the positives, top first
    # the most relevant item ranked last: raising its score must lower the loss
    scores = rows(0.1, 0.9, 0.5, 0.3).requires_grad_()
    ContinuousAPLoss(0.1)(scores, rows(1, 0.6, 0.2, 0)).backward()
    assert scores.grad[0, 0] < 0 and scores.grad[0, 3] > 0


def test_hand_written_backward_matches_autograd_of_the_definition():
    def by_definition(scores, targets, temperature):  # the module docstring's formulas, autograd throughout
        step = torch.sigmoid((scores[:, None, :] - scores[:, :, None]) / temperature)
        step = step + 0.5 * torch.eye(scores.shape[-1], dtype=scores.dtype)  # H(0) := 1 for the item itself
        precision = (step * targets[:, None, :]).sum(-1) / step.sum(-1)
        return (targets * precision).sum(-1) / targets.sum(-1)

    torch.manual_seed(0)
    scores = (0.05 * torch.randn(6, 9, dtype=torch.float64)).requires_grad_()
    targets, weights = torch.rand(6, 9, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    ours = continuous_average_precision(scores, targets, 0.02, chunk_size=4)  # two chunks: 4 queries, then 2
    expected = by_definition(scores, targets, 0.02)
    torch.testing.assert_close(ours, expected)
    (ours_grad,) = torch.autograd.grad((weights * ours).sum(), scores)
    (expected_grad,) = torch.autograd.grad((weights * expected).sum(), scores)
    torch.testing.assert_close(ours_grad, expected_grad)
    assert torch.autograd.gradcheck(lambda s: continuous_average_precision(s, targets, 0.02, chunk_size=4), (scores,))


def test_queries_without_relevant_items_are_left_out_and_an_all_empty_batch_is_an_error():
    scores, targets = torch.rand(3, 5), torch.rand(3, 5)
    targets[1] = 0
    valid = continuous_average_precision(scores[[0, 2]], targets[[0, 2]], 0.01).mean()
    assert float(ContinuousAPLoss(0.01)(scores, targets)) == pytest.approx(1 - float(valid), abs=1e-6)
    with pytest.raises(ValueError, match="at least one query"):
        ContinuousAPLoss(0.01)(scores, torch.zeros(3, 5))


def test_object_filter_maps_each_patch_to_its_nearest_prototype_at_low_temperature():
    dim, prototypes = 8, 4
    flt = ObjectAwareFilter(dim, prototypes, temperature=1e-6)
    with torch.no_grad():
        flt.prototypes.copy_(torch.eye(dim)[:prototypes])
        for linear in (flt.query, flt.key, flt.value):
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
    torch.manual_seed(0)
    z = torch.randn(2, 6, dim)
    filtered, attention = flt(z)
    nearest = z[..., :prototypes].argmax(-1)
    torch.testing.assert_close(filtered, torch.eye(dim)[nearest])
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 6))
    cos = torch.nn.functional.cosine_similarity(filtered[0, :, None], filtered[0, None], dim=-1)
    torch.testing.assert_close(cos, (nearest[0, :, None] == nearest[0, None]).float())


def test_continuous_targets_are_monotone_in_unit_range_and_never_thresholded():
    sims = torch.linspace(-1, 1, 41)[None]
    for kind in ("clamp", "affine", "softmax"):
        targets = continuous_targets(sims, kind, 0.05)[0]
        assert targets.min() >= 0 and targets.max() <= 1
        assert all(b >= a for a, b in zip(targets, targets[1:]))
    for kind in ("affine", "softmax"):  # strictly increasing: no two levels collapse into one
        targets = continuous_targets(sims, kind, 0.5)[0]
        assert len(torch.unique(targets)) == 41
    with pytest.raises(ValueError, match="target_map must be one of"):
        continuous_targets(sims, "top5")


def cotap(tmp_path, *overrides: str, steps: int = 10):
    cfg = load_config(CONFIGS / "cotap/tiny_shapes_scenes.yaml", [
        *TINY, f"run.out_dir={tmp_path}", "objective.init=null", "objective.init_heads=false", *overrides,
    ])
    torch.manual_seed(0)
    return OBJECTIVES.get("cotap")(cfg, steps)


def batch(b: int = 4) -> dict:
    torch.manual_seed(1)
    views = [torch.randn(b, 3, 32, 32) for _ in range(2)] + [torch.randn(b, 3, 16, 16) for _ in range(2)]
    return {"views": views, "partner_views": [torch.randn(b, 3, 32, 32)]}


def test_prototypes_get_gradient_only_through_the_student_and_move_by_ema(tmp_path):
    model = cotap(tmp_path, "objective.momentum_start=0.9", "objective.momentum_end=0.9")
    out = model(batch(), step=0)
    out.loss.backward()
    assert model.student_filter.prototypes.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.teacher_filter.parameters())
    assert all(not p.requires_grad for m in (model.teacher, model.teacher_projection, model.teacher_head) for p in m.parameters())
    before = model.teacher_filter.prototypes.clone()
    with torch.no_grad():
        model.student_filter.prototypes.add_(1.0)
    model.after_step(0)
    torch.testing.assert_close(model.teacher_filter.prototypes - before, 0.1 * (model.student_filter.prototypes - before))


def test_backbone_learning_rate_is_scaled_and_every_parameter_is_optimised_once(tmp_path):
    model = cotap(tmp_path, "objective.backbone_lr_scale=0.25")
    groups = model.param_groups(0.04)
    backbone = {id(p) for p in model.student.parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == sum(p.requires_grad for p in model.parameters())
    for group in groups:
        assert group["lr_scale"] == (0.25 if id(group["params"][0]) in backbone else 1.0)


def test_cotap_term_falls_on_a_fixed_batch_with_a_fixed_teacher(tmp_path):
    model = cotap(tmp_path, "objective.base_weight=0", "objective.momentum_start=1.0", steps=12)
    optimizer = torch.optim.AdamW(model.param_groups(0.0), lr=1e-3)
    inputs, losses = batch(4), []
    for step in range(12):
        out = model(inputs, step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.97 * losses[0], losses


def test_init_needs_trained_weights_of_the_same_shape_and_heads_where_asked(tmp_path, mae_teacher):
    with pytest.raises(BackboneLoadError, match="continuing needs trained weights"):
        cotap(tmp_path, "objective.init=vit_tiny_patch16_224")
    with pytest.raises(BackboneLoadError, match="differs from the model"):
        cotap(tmp_path, f"objective.init={mae_teacher}")  # 48-d, 4 blocks
    with pytest.raises(ConfigError, match="init_heads needs objective.init"):
        cotap(tmp_path, "objective.init_heads=true")
    with pytest.raises(BackboneLoadError, match="'student_head' does not match this module: missing keys \\['weight'"):
        load_part_into(torch.nn.Linear(2, 2), mae_teacher, "student_head")  # an MAE run has no DINO head


@pytest.mark.slow
def test_dino_then_knn_pairs_then_cotap_continues_and_learns(tmp_path):
    dino = train(load_config(CONFIGS / "dino/tiny_mnist.yaml", [
        *TINY[:8], f"run.out_dir={tmp_path}", "run.name=dino", "data.name=shapes_scenes", "train.max_steps=4",
        "objective.output_dim=64", "objective.hidden_dim=32", "objective.bottleneck_dim=16", "data.transform.n_local_views=2",
    ]))
    nns = tmp_path / "nns_dino_shapes_scenes_train_None_32.npz"
    result, _ = run_protocol("knn-pairs", str(dino.exported), "shapes_scenes", [
        "data.limit=64", "knn_pairs.top=8", f"knn_pairs.file={nns}", "run.progress=false", f"run.cache_dir={tmp_path / 'cache'}",
    ], tmp_path / "eval")
    assert result.details["images"] == 64 and nns.is_file()
    cfg = load_config(CONFIGS / "cotap/tiny_shapes_scenes.yaml", [
        *TINY, f"run.out_dir={tmp_path}", f"objective.init={dino.run_dir}", f"data.options.file={nns}",
        "train.max_steps=16", "optim.lr=2e-3",
    ])
    continued = OBJECTIVES.get("cotap")(cfg, 16).eval()
    start, images = load_backbone(dino.exported).eval(), torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(continued.student(images), start(images))  # continues from the DINO teacher
    torch.testing.assert_close(continued.teacher(images), start(images))
    state = torch.load(dino.checkpoint, weights_only=True)["model"]  # and its heads and centre (init_heads)
    for name, tensor in continued.state_dict().items():
        if name.startswith(("student_head.", "teacher_head.", "center.")):
            assert torch.equal(tensor, state[name]), name
    run = train(cfg)
    with open(run.run_dir / "metrics.csv") as handle:
        logged = list(csv.DictReader(handle))
    assert len(run.losses) == 16 and all(np.isfinite(run.losses))
    assert all(0 < float(r["cotap_intra"]) < 1 and 0 < float(r["cotap_inter"]) < 1 for r in logged)
    assert np.mean(run.losses[-4:]) < 0.95 * np.mean(run.losses[:4]), run.losses
    end = load_backbone(run.exported).eval()
    assert end.spec == start.spec and not torch.allclose(start(images), end(images))  # it trained
