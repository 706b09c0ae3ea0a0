"""DISCOVR: Sinkhorn, cluster distillation and the DINO term on fixed numbers computed with a numpy
re-implementation of the released code (docs/methods/discovr.md, "Checks"), the released settings (momenta,
centring, decoder input, positions, image encoders), token pairing, gradient routing, EMA timing and a
tiny run."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ssl_distill.backbones import load_backbone
from ssl_distill.backbones.video_vit import VideoViT, sincos_1d
from ssl_distill.config import load_config
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.engine import train
from ssl_distill.losses import ClusterDistillationLoss, SelfDistillationLoss
from ssl_distill.losses.cluster_distillation import sinkhorn_assignments, standardize_tokens
from ssl_distill.modules.centering import TeacherCentering
from ssl_distill.modules.frame_alignment import frame_targets, official_decoder_order
from ssl_distill.modules.masking import tube_mask
from ssl_distill.modules.prototypes import Prototypes
from ssl_distill.modules.tubelets import tubelet_pixels
from ssl_distill.registry import OBJECTIVES

from conftest import CONFIGS, tiny_config

IMAGE_TOKENS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.6], [0.2, 0.9]])
VIDEO_TOKENS = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.3, 1.0]])
SMALL = [
    "objective.output_dim=64",
    "objective.hidden_dim=32",
    "objective.bottleneck_dim=16",
    "objective.num_prototypes=8",
]


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Path:
    return write_synthetic_echo(tmp_path_factory.mktemp("echo"), 8, seed=2, size=32, frames=24)


def identity_prototypes() -> Prototypes:
    prototypes = Prototypes(2, 2)
    prototypes.weight.data = torch.eye(2)
    return prototypes


def discovr(tmp_path: Path, *overrides: str, max_steps: int = 10):
    torch.manual_seed(0)
    return OBJECTIVES.get("discovr")(tiny_config("discovr/tiny_echo.yaml", tmp_path, *SMALL, *overrides), max_steps)


def clip(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))


def test_sinkhorn_equipartition_flips_a_token():
    scores = identity_prototypes()(IMAGE_TOKENS)
    expected = [[0.993884, 0.110432], [0.970143, 0.242536], [0.759257, 0.650791], [0.21693, 0.976187]]
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-6, rtol=0)
    q = sinkhorn_assignments(scores, epsilon=0.05, iterations=10)
    expected = [[0.999999, 1e-6], [0.99997, 3e-5], [0.123456, 0.876544], [0.0, 1.0]]
    torch.testing.assert_close(q, torch.tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(4))
    assert q.argmax(dim=1).tolist() == [0, 0, 1, 1] and scores.argmax(dim=1).tolist() == [0, 0, 0, 1]
    half = sinkhorn_assignments(scores.half())  # exp(1 / 0.05) overflows fp16: computed in fp32
    assert half.dtype == torch.float32 and half.argmax(dim=1).tolist() == [0, 0, 1, 1]


def _sinkhorn_worker(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    scores = torch.rand(12, 5, generator=torch.Generator().manual_seed(0))
    torch.save(sinkhorn_assignments(scores.chunk(2)[rank]), Path(out) / f"q{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sinkhorn_under_ddp_equals_one_process_over_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sinkhorn_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    gathered = torch.cat([torch.load(tmp_path / f"q{rank}.pt") for rank in (0, 1)])
    scores = torch.rand(12, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gathered, sinkhorn_assignments(scores))
    assert not torch.allclose(gathered[:6], sinkhorn_assignments(scores[:6]))  # the sums did span both ranks


def test_cluster_distillation_matches_the_reference_and_trains_only_the_student():
    prototypes = identity_prototypes()
    image, video = IMAGE_TOKENS.clone().requires_grad_(), VIDEO_TOKENS.clone().requires_grad_()
    loss = ClusterDistillationLoss(temperature=0.1, epsilon=0.05, iterations=10)(prototypes(video), prototypes(image))
    assert loss.item() == pytest.approx(0.1736156, abs=1e-6)
    loss.backward()
    assert image.grad is None
    assert video.grad.abs().sum() > 0 and prototypes.weight.grad.abs().sum() > 0


def test_dino_term_and_both_centre_updates():
    teacher = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    student = torch.tensor([[[0.3, 0.1, -0.2], [0.0, 0.4, 0.1]]])  # one view
    loss = SelfDistillationLoss(student_temp=0.1, skip_same_view=False)
    for center_on, centre in (("probabilities", [0.230334, 0.049638, -0.179973]), ("logits", [0.255, 0.025, -0.23])):
        centering = TeacherCentering(3, momentum=0.9, center_on=center_on)
        centering.center.center = torch.tensor([[0.2, 0.0, -0.2]])
        assert loss(centering(teacher, 0.04)[None], student).item() == pytest.approx(0.1135665, abs=1e-6)
        assert torch.equal(centering.center.value, torch.tensor([[0.2, 0.0, -0.2]]))  # moves only in update
        centering.update()
        torch.testing.assert_close(centering.center.value, torch.tensor([centre]), atol=1e-6, rtol=0)
    row = F.softmax((teacher[1] - torch.tensor([0.2, 0.0, -0.2])) / 0.04, dim=-1)
    torch.testing.assert_close(row, torch.tensor([0.006689, 0.992762, 0.000549]), atol=1e-6, rtol=0)


def test_standardize_tokens_per_frame_and_channel():
    tokens = torch.randn(3, 5, 49, 4) * 7 + 2
    expected = (tokens - tokens.mean(dim=2, keepdim=True)) / (tokens.std(dim=2, keepdim=True) + 1e-6)
    torch.testing.assert_close(standardize_tokens(tokens), expected)
    torch.testing.assert_close(standardize_tokens(tokens).std(dim=2), torch.ones(3, 5, 4))


def frame_and_spatial(batch: int, frames: int, spatial: int) -> torch.Tensor:
    """(B, T, S, 2) tokens whose features are their own (frame, spatial position)."""
    t, s = torch.meshgrid(torch.arange(frames), torch.arange(spatial), indexing="ij")
    return torch.stack([t, s], dim=-1).float().expand(batch, -1, -1, -1)


def test_aligned_pairing_maps_video_token_t_s_to_frame_2t_at_s():
    targets = frame_targets(frame_and_spatial(2, 8, 49), tubelet_size=2)
    t, s = torch.arange(4 * 49).div(49, rounding_mode="floor"), torch.arange(4 * 49) % 49
    assert torch.equal(targets[0, :, 0], 2 * t.float()) and torch.equal(targets[1, :, 1], s.float())
    # the same on pixels: video tubelet tokens (video ViT order) against per-frame patches (image ViT order)
    video = torch.randn(2, 3, 8, 32, 32)
    frames = tubelet_pixels(video.transpose(1, 2).flatten(0, 1).unsqueeze(2), 1, 8)
    paired = frame_targets(frames.unflatten(0, (2, 8)), tubelet_size=2)
    assert torch.equal(paired, tubelet_pixels(video, 2, 8)[..., : 8 * 8 * 3])


def test_official_misalignment_reproduces_the_shipped_order():
    targets = frame_targets(frame_and_spatial(1, 8, 49), tubelet_size=2, official=True)[0]
    t, s = torch.arange(4 * 49).div(49, rounding_mode="floor"), torch.arange(4 * 49) % 49
    assert torch.equal(targets[:, 0], (2 * t + (2 * s >= 49)).float())  # frame 2t or 2t + 1
    assert torch.equal(targets[:, 1], (2 * s % 49).float())  # spatial 2s mod 49
    idx_keep = tube_mask(3, (4, 7, 7), 0.9, generator=torch.Generator().manual_seed(0))
    order = official_decoder_order(idx_keep, 196)
    visible = idx_keep[:, 1:] - 1
    assert torch.equal(order[:, :20], visible)
    hidden = order[:, 20:]
    assert torch.equal(hidden, hidden.sort(dim=1).values)
    assert torch.equal(torch.cat([visible, hidden], 1).sort(dim=1).values, torch.arange(196).expand(3, -1))


def test_paper_scale_token_counts():
    assert tube_mask(2, (32, 7, 7), 0.9).shape == (2, 1 + 160)
    assert tube_mask(2, (1, 7, 7), 0.9).shape == (2, 1 + 5)
    assert frame_targets(torch.zeros(1, 64, 49, 1), tubelet_size=2).shape == (1, 1568, 1)
    assert frame_targets(torch.zeros(1, 64, 49, 1), tubelet_size=2, official=True).shape == (1, 1568, 1)


def test_cluster_distillation_gives_the_image_branch_no_gradient(tmp_path):
    model = discovr(tmp_path, "objective.video_dino_weight=0", "objective.image_dino_weight=0")
    assert model.requires == {"video"} and model.backbone is model.video_student
    model({"video": clip()}, step=0).loss.backward()

    def total_grad(module: torch.nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert total_grad(model.video_student) > 0 and total_grad(model.decoder) > 0 and total_grad(model.prototypes) > 0
    assert total_grad(model.image_student) == 0 and total_grad(model.image_student_head) == 0
    for teacher in (model.image_teacher, model.image_teacher_head, model.video_teacher, model.video_teacher_head):
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("official", [False, True])
def test_ema_teachers_centres_and_prototypes_move_only_in_after_step(tmp_path, official):
    switches = [f"objective.official_misalignment={official}", f"objective.center_on={'probabilities' if official else 'logits'}"]
    model = discovr(tmp_path, "objective.momentum_start=0.9", "objective.momentum_end=1.0", *switches)
    pairs = [
        (model.video_student, model.video_teacher),
        (model.video_student_head, model.video_teacher_head),
        (model.image_student, model.image_teacher),
        (model.image_student_head, model.image_teacher_head),
    ]
    for student, teacher in pairs:
        assert all(torch.equal(s, t) for s, t in zip(student.parameters(), teacher.parameters()))
    moving = {k: v.clone() for k, v in model.state_dict().items() if "teacher" in k or "center" in k}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    output = model({"video": clip()}, step=3)
    assert torch.isfinite(output.loss.detach()) and set(output.logs) >= {"video_dino", "image_dino", "cluster"}
    output.loss.backward()
    optimizer.step()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in moving.items())
    assert not torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(8))

    momentum = model.ema.momentum(3)
    assert momentum == pytest.approx(1.0 - 0.1 * (np.cos(np.pi * 3 / 9) + 1) / 2)
    assert (model.ema.momentum(0), model.ema.momentum(9)) == (pytest.approx(0.9), pytest.approx(1.0))
    old_teachers = [[t.clone() for t in teacher.parameters()] for _, teacher in pairs]
    model.after_step(3)
    for (student, teacher), old in zip(pairs, old_teachers):
        for s, t, t_old in zip(student.parameters(), teacher.parameters(), old):
            torch.testing.assert_close(t - t_old, (1 - momentum) * (s - t_old))
    assert not torch.equal(model.video_center.center.value, moving["video_center.center.center"])
    assert not torch.equal(model.image_center.center.value, moving["image_center.center.center"])
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(8))


def test_released_settings_are_the_defaults_and_the_official_config_reproduces_them():
    """Fix 1: EMA 0.99 and centre momentum 0.8 (the model's constructor defaults, which the released runs
    used), centring on probabilities; the official config adds the released token pairing."""
    cfg = load_config(CONFIGS / "discovr/vitb_echo_official.yaml")
    o = cfg.objective
    assert (o.momentum_start, o.momentum_end, o.center_momentum, o.center_on) == (0.99, 0.99, 0.8, "probabilities")
    assert o.official_misalignment and (o.image_qkv_bias, o.image_norm_eps) == (False, 1e-5)
    assert (cfg.model.pos_embed, cfg.model.qkv_bias, cfg.model.norm_eps) == ("sincos_1d", True, 1e-6)
    assert (cfg.model.num_frames, cfg.model.tubelet_size, o.decoder.dim) == (64, 2, 384)
    defaults = OBJECTIVES.get("discovr").Config()
    assert (defaults.momentum_start, defaults.momentum_end, defaults.center_momentum) == (0.99, 0.99, 0.8)


def test_clustering_decoder_sees_no_class_token_and_projects_without_bias(tmp_path):
    """Fix 2: official `encoder_to_decoder(x[:, 1:])` with `bias=False`; the decoder's output equals the
    released computation [visible + pos, mask token + pos] -> blocks -> norm -> head, token for token."""
    model = discovr(tmp_path)
    decoder = model.decoder
    assert decoder.embed.bias is None and decoder.num_prefix_tokens == 0
    idx_keep = tube_mask(2, model.video_student.grid_size, 0.9, generator=torch.Generator().manual_seed(0))
    encoded = model.video_student.encode(clip(), idx_keep).tokens  # (B, 1 + K, D)
    ours = decoder(encoded[:, 1:], idx_keep)
    with torch.no_grad():
        changed_cls = encoded.clone()
        changed_cls[:, 0] += 5.0
    torch.testing.assert_close(decoder(changed_cls[:, 1:], idx_keep), ours)

    num_patches = model.video_student.num_patches
    order = official_decoder_order(idx_keep, num_patches)  # visible patches, then hidden ones
    positions = decoder.decoder.pos_embed[0].expand(2, -1, -1)  # (B, L, d): patch positions only
    visible = idx_keep[:, 1:] - 1
    hidden = order[:, visible.shape[1] :]
    x = torch.cat(
        [
            decoder.embed(encoded[:, 1:]) + torch.gather(positions, 1, visible[..., None].expand(-1, -1, positions.shape[-1])),
            decoder.decoder.mask_token + torch.gather(positions, 1, hidden[..., None].expand(-1, -1, positions.shape[-1])),
        ],
        dim=1,
    )
    released = decoder.predict(decoder.decoder.norm(decoder.decoder.blocks(x)))
    torch.testing.assert_close(torch.gather(ours, 1, order[..., None].expand_as(ours)), released, atol=1e-5, rtol=1e-5)


def test_position_tables_are_videomae_1d_sinusoids(tmp_path):
    """Fix 3: encoder positions = [zero row; table(L)], decoder positions = rows 1..L of table(L + 1),
    with VideoMAE's interleaved table (sin on even channels, cos on odd ones)."""
    num, dim = 6, 8
    angles = np.arange(num)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)[None]
    reference = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
    np.testing.assert_allclose(sincos_1d(num, dim).numpy(), reference, atol=1e-6)

    model = discovr(tmp_path)
    student, length = model.video_student, model.video_student.num_patches
    assert student.spec["pos_embed"] == "sincos_1d"
    expected = torch.cat([torch.zeros(1, student.embed_dim), sincos_1d(length, student.embed_dim)])
    torch.testing.assert_close(student.pos_embed[0], expected)
    torch.testing.assert_close(model.decoder.decoder.pos_embed[0], sincos_1d(length + 1, model.decoder.decoder.pos_embed.shape[-1])[1:])
    image_positions = model.image_student.pos_embed[0]
    torch.testing.assert_close(image_positions, torch.cat([torch.zeros(1, student.embed_dim), sincos_1d(16, student.embed_dim)]))


def test_image_encoders_use_the_encoder_class_defaults(tmp_path):
    """Fix 4: the image student and teacher have no qkv bias and LayerNorm eps 1e-5; the video ones keep
    VideoMAE's qkv bias and eps 1e-6."""
    model = discovr(tmp_path)
    for image in (model.image_student, model.image_teacher):
        assert image.blocks[0].attn.qkv.bias is None and image.norm.eps == 1e-5 and image.blocks[0].norm1.eps == 1e-5
    for video in (model.video_student, model.video_teacher):
        assert video.blocks[0].attn.qkv.bias is not None and video.norm.eps == 1e-6


def test_teacher_temperature_warms_up_linearly_per_step(tmp_path):
    model = discovr(tmp_path, "objective.warmup_teacher_temp_fraction=0.5", max_steps=20)
    temps = [model.teacher_temperature(step) for step in (0, 5, 10, 19)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_tiny_discovr_run_learns_the_clusters(tmp_path, echo):
    cfg = tiny_config(
        "discovr/tiny_echo.yaml", tmp_path, *SMALL, f"data.root={echo}", "data.split=all", "data.batch_size=4",
        "train.max_steps=24", "optim.lr=1e-3",
    )
    result = train(cfg)
    assert len(result.losses) == 24 and all(np.isfinite(result.losses))
    with open(result.run_dir / "metrics.csv") as handle:
        cluster = [float(row["cluster"]) for row in csv.DictReader(handle)]
    # The cluster term has image-teacher targets at a fixed temperature and must fall; the DINO terms
    # move little in 24 steps on these near-identical synthetic clips.
    assert np.mean(cluster[-4:]) < 0.85 * np.mean(cluster[:4]), cluster
    exported = load_backbone(result.exported)
    assert isinstance(exported, VideoViT) and exported.spec["num_frames"] == 8 and exported.tubelet_size == 2
