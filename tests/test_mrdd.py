"""MRDD: masks, VAE and CLUB terms on hand cases (mrdd.md §10), stage-2 gradient flow, tiny runs of both stages."""

from __future__ import annotations

import math

import pytest
import torch

from eval.cluster import clustering_scores
from ssl_distill.backbones import load_backbone
from ssl_distill.config import load_config
from ssl_distill.errors import ConfigError
from ssl_distill.losses import MultiViewVAELoss, club_learning_loss, club_upper_bound, gaussian_kl
from ssl_distill.modules.club import ConditionalGaussian
from ssl_distill.modules.masking import random_patch_mask, zero_patches

from conftest import CONFIGS

TINY_MRDD = [
    "model.hidden_dim=4", "model.num_res_blocks=1", "model.latent_ch=2", "model.img_size=16",
    "data.name=edge_digits", "data.limit=96", "data.batch_size=32", "data.options.view.img_size=16",
    "train.progress=false", "train.tensorboard=false", "train.log_every=1",
]


def mrdd_config(config: str, out, *overrides: str):
    return load_config(CONFIGS / "mrdd" / config, [*TINY_MRDD, f"run.out_dir={out}", *overrides])


@pytest.mark.parametrize(("size", "patch", "ratio", "hidden"), [(4, 2, 0.7, 2), (32, 2, 0.7, 179), (32, 2, 0.8, 204)])
def test_patch_mask_hides_exactly_floor_ratio_of_the_patches(size, patch, ratio, hidden):
    mask = random_patch_mask(5, (size // patch) ** 2, ratio)
    assert mask.sum(1).tolist() == [hidden] * 5
    assert len({tuple(row.tolist()) for row in mask}) > 1  # a mask per sample


def test_zero_patches_round_trip_and_masked_pixels():
    images = torch.arange(32, dtype=torch.float64).view(2, 1, 4, 4)
    assert torch.equal(zero_patches(images, torch.zeros(2, 4, dtype=torch.bool), 2), images)
    mask = random_patch_mask(2, 4, 0.7)
    masked = zero_patches(images, mask, 2)
    for b in range(2):
        for p in range(4):
            block = masked[b, 0, 2 * (p // 2) : 2 * (p // 2) + 2, 2 * (p % 2) : 2 * (p % 2) + 2]
            original = images[b, 0, 2 * (p // 2) : 2 * (p // 2) + 2, 2 * (p % 2) : 2 * (p % 2) + 2]
            assert torch.equal(block, torch.zeros_like(block) if mask[b, p] else original)


def test_kl_against_the_standard_normal_prior_on_hand_cases():
    mu = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    assert gaussian_kl(mu, torch.zeros_like(mu)).tolist() == [2.5, 0.0]
    # KL(N(0, e) || N(0, 1)) = 0.5 (e - 1 - 1) per dimension
    assert gaussian_kl(torch.zeros(1, 1), torch.ones(1, 1)).item() == pytest.approx(0.5 * (math.e - 2))


def test_stage1_loss_hand_case_in_both_reductions():
    x = [torch.ones(2, 1, 2, 2, dtype=torch.float64)] * 2
    recon = [torch.zeros(2, 1, 2, 2, dtype=torch.float64)] * 2
    mu = logvar = torch.zeros(2, 3, dtype=torch.float64)
    released, _, _ = MultiViewVAELoss(0.5, 1.0, "released")(recon, x, mu, logvar)
    assert released.item() == 8.0  # 0.5 * (8 + 8), SSE summed over the batch (official)
    per_sample, sse, kl = MultiViewVAELoss(0.5, 1.0)(recon, x, mu, logvar)
    assert (per_sample.item(), sse.item(), kl.item()) == (4.0, 8.0, 0.0)


def test_club_is_zero_when_q_ignores_s():
    torch.manual_seed(0)
    q = ConditionalGaussian(3, 4, 8).double()
    for net in (q.mu, q.logvar):
        torch.nn.init.zeros_(net[0].weight)
    s, c = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    assert abs(club_upper_bound(*q(s), c, torch.randperm(16)).item()) < 1e-12


def test_club_identity_case():
    s = torch.randn(8, 5, dtype=torch.float64)
    permutation = torch.randperm(8)
    zero = torch.zeros_like(s)
    assert club_learning_loss(s, zero, s).item() == 0.0
    expected = 0.5 * (s - s[permutation]).pow(2).sum(1).mean()
    assert club_upper_bound(s, zero, s, permutation).item() == pytest.approx(expected.item(), rel=1e-12)


def _club_estimate(sample) -> float:
    """Train q(c | s) on pairs from `sample`, then estimate the bound on fresh pairs."""
    torch.manual_seed(0)
    s, c = sample(1024)
    q = ConditionalGaussian(s.shape[1], c.shape[1], 64)
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(200):
        loss = club_learning_loss(*q(s), c)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        s_new, c_new = sample(4096)
        return float(club_upper_bound(*q(s_new), c_new))


class Pairs:
    def __init__(self, dependent: bool) -> None:
        self.generator = torch.Generator().manual_seed(1)
        self.mixing = torch.randn(4, 4, generator=self.generator)
        self.dependent = dependent

    def __call__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.randn(n, 4, generator=self.generator)
        noise = torch.randn(n, 4, generator=self.generator)
        self.last_c = s @ self.mixing + 0.1 * noise if self.dependent else noise
        return s, self.last_c


def test_club_estimate_is_near_zero_for_independent_inputs_and_large_for_dependent_ones():
    independent = _club_estimate(Pairs(dependent=False))
    dependent = _club_estimate(Pairs(dependent=True))
    assert abs(independent) < 0.1
    assert dependent > 2.0


def test_clustering_scores_on_hand_cases():
    truth = [0, 0, 1, 1, 2, 2]
    permuted = clustering_scores(truth, [1, 1, 0, 0, 2, 2])
    assert permuted["acc"] == 1.0 and permuted["nmi"] == pytest.approx(1.0) and permuted["ari"] == pytest.approx(1.0)
    mixed = clustering_scores(truth, [0, 1, 0, 1, 2, 2])
    assert mixed["acc"] == pytest.approx(4 / 6) and mixed["nmi"] == pytest.approx(0.57938, abs=1e-5)


def test_stage2_needs_a_stage1_run(tmp_path):
    with pytest.raises(ConfigError, match="objective.consistency"):
        from ssl_distill.objectives.mrdd import MRDD

        MRDD(mrdd_config("tiny_edge_mnist_stage2.yaml", tmp_path, "objective.consistency=null"), 4)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    from ssl_distill.engine import train

    out = tmp_path_factory.mktemp("mrdd")
    result = train(mrdd_config("tiny_edge_mnist.yaml", out, "train.max_steps=12", "optim.lr=2e-3"))
    return result


@pytest.mark.slow
def test_stage1_runs_learns_and_exports_the_consistency_encoder(stage1_run):
    losses = stage1_run.losses
    assert sum(losses[-3:]) < sum(losses[:3])
    backbone = load_backbone(stage1_run.run_dir / "backbone.safetensors").eval()
    views = [torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)]
    assert backbone.representations(views)["consistent"].shape == (4, 10)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["paper", "released"])
def test_stage2_trains_only_the_specific_side(stage1_run, tmp_path, mode):
    from ssl_distill.objectives.mrdd import MRDD

    cfg = mrdd_config("tiny_edge_mnist_stage2.yaml", tmp_path, f"objective.consistency={stage1_run.run_dir}",
                      f"objective.stage2_mode={mode}")
    objective = MRDD(cfg, 10)
    frozen = {k: v.clone() for k, v in objective.backbone.consistency.state_dict().items()}
    specific = {k: v.clone() for k, v in objective.backbone.specific.state_dict().items()}
    club = {k: v.clone() for k, v in objective.club.state_dict().items()}
    optimizer = torch.optim.AdamW(objective.param_groups(0.0))
    objective.train()
    batch = {"views": [torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)], "view_names": [["digit"] * 8, ["edge"] * 8]}
    objective(batch, 0).loss.backward()
    optimizer.step()
    after = objective.backbone.consistency.state_dict()
    for name, value in frozen.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(after[name], value) == (mode == "paper"), name  # the release updates BN statistics
        else:
            assert torch.equal(after[name], value), name
    assert any(not torch.equal(objective.backbone.specific.state_dict()[k], v) for k, v in specific.items())
    assert any(not torch.equal(objective.club.state_dict()[k], v) for k, v in club.items())


@pytest.mark.slow
def test_stage2_runs_and_learns_from_yaml(stage1_run, tmp_path):
    from ssl_distill.engine import train

    cfg = mrdd_config("tiny_edge_mnist_stage2.yaml", tmp_path, f"objective.consistency={stage1_run.run_dir}",
                      "train.max_steps=12", "optim.lr=2e-3")
    result = train(cfg)
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    backbone = load_backbone(result.run_dir / "backbone.safetensors").eval()
    stage1 = load_backbone(stage1_run.run_dir / "backbone.safetensors").eval()
    views = [torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)]
    reps = backbone.representations(views)
    assert torch.equal(reps["consistent"], stage1.representations(views)["consistent"])  # stage 1 untouched
    assert torch.equal(reps["combined"], torch.cat([reps["consistent"], reps["specific"]], dim=1))


def test_mrdd_refuses_a_dataset_without_aligned_views(tmp_path):
    from ssl_distill.engine.trainer import Trainer

    cfg = load_config(CONFIGS / "mrdd" / "tiny_edge_mnist.yaml", ["data.name=mnist", f"run.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="view_names"):
        Trainer(cfg)
