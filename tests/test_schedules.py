"""Per-iteration schedules, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_distill.schedules import linear_warmup, warmup_cosine


def test_warmup_then_half_cosine():
    values = warmup_cosine(1.0, 0.0, total_steps=6, warmup_steps=2)
    # warmup 0, 0.5; then cosine over 4 steps: 1, (1+cos(pi/4))/2, 0.5, (1+cos(3pi/4))/2
    expected = [0.0, 0.5, 1.0, (1 + np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(3 * np.pi / 4)) / 2]
    np.testing.assert_allclose(values, expected, atol=1e-12)
    np.testing.assert_allclose(warmup_cosine(0.05, 0.05, 5), [0.05] * 5)  # constant weight decay


def test_linear_warmup_of_the_teacher_temperature():
    assert linear_warmup(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(10, 10, 0.04, 0.07) == linear_warmup(99, 10, 0.04, 0.07) == 0.07
    assert linear_warmup(0, 0, 0.04, 0.07) == 0.07  # no warmup
