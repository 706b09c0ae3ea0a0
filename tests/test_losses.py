"""Loss math on small fixed tensors (values derived by hand in the comments; docs/methods/dmae.md)."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_distill.losses import MaskedReconstructionLoss, NormalizedL1Loss


def test_normalized_l1_closed_form():
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    student = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    # l2n(student) = [[.7071, .7071], [0, 1]]: |diff| sums to (1 - .7071) + .7071 = 1 over 4 elements
    assert NormalizedL1Loss()(teacher, student).item() == pytest.approx(0.25, abs=1e-7)


def test_normalized_l1_invariances_and_bound():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    loss = NormalizedL1Loss()
    base = loss(teacher, student)
    scales = torch.rand(2, 5, 1) + 0.1
    assert loss(teacher * scales, student * 3.0).item() == pytest.approx(base.item(), abs=1e-7)
    perm = torch.randperm(5)
    assert loss(teacher[:, perm], student[:, perm]).item() == pytest.approx(base.item(), abs=1e-7)
    assert loss(teacher[:, perm], student).item() != pytest.approx(base.item(), abs=1e-4)
    assert base.item() <= 2 / math.sqrt(16)


def test_normalized_l1_teacher_gets_no_gradient():
    teacher = torch.randn(1, 3, 4, requires_grad=True)
    student = torch.randn(1, 3, 4, requires_grad=True)
    NormalizedL1Loss()(teacher, student).backward()
    assert teacher.grad is None and student.grad is not None


def test_reconstruction_ignores_visible_patches():
    target = torch.randn(2, 4, 3)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    pred = target.clone()
    pred[mask == 0] += 5.0  # visible predictions are wrong, hidden ones exact
    pred.requires_grad_(True)
    loss = MaskedReconstructionLoss()(pred, target, mask)
    assert loss.item() == 0.0
    loss2 = MaskedReconstructionLoss()(pred + 0.0, target + (mask[..., None]), mask)
    assert loss2.item() == pytest.approx(1.0)  # pred - target = -1 on every hidden element
    loss2.backward()
    assert torch.all(pred.grad[mask == 0] == 0) and torch.any(pred.grad[mask == 1] != 0)


def test_reconstruction_hand_case_and_norm_pix():
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])
    mask = torch.tensor([[1.0, 1.0]])
    # per patch: mean((1, 9)) = 5 and mean((4, 4)) = 4 -> 4.5
    assert MaskedReconstructionLoss()(pred, target, mask).item() == pytest.approx(4.5)
    # norm_pix: patch 1 -> (-1, 1)/sqrt(2 + eps) (unbiased var 2), patch 2 -> (0, 0): mean((0.5, 0.5)) / 2
    value = MaskedReconstructionLoss(norm_pix=True)(pred, target, mask).item()
    assert value == pytest.approx(0.5 * (1 / (2 + 1e-6)), rel=1e-5)
