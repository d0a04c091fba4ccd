"""LARS against the apex LARC formula written out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from simsiam_eval.linear.lars import LARS

TRUST, EPS, LR, MOMENTUM = 0.001, 1e-8, 1.6, 0.9


def hand_update(w: list[float], g: list[float], wd: float, lr: float = LR, clip: bool = False) -> list[float]:
    """apex LARC (wrapping SGD, first step so the momentum buffer equals the update), in plain Python."""
    w_norm = math.sqrt(sum(x * x for x in w))
    g_norm = math.sqrt(sum(x * x for x in g))
    if w_norm == 0 or g_norm == 0:  # apex: no adaptation and no weight decay
        return [wi - lr * gi for wi, gi in zip(w, g)]
    local = TRUST * w_norm / (g_norm + wd * w_norm + EPS)
    if clip:
        local = min(local / lr, 1.0)
    return [wi - lr * (gi + wd * wi) * local for wi, gi in zip(w, g)]


def one_step(w, g, wd, **options):
    p = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))
    p.grad = torch.tensor(g, dtype=torch.float64)
    LARS([p], lr=LR, momentum=MOMENTUM, weight_decay=wd, **options).step()
    return p.detach().tolist()


@pytest.mark.parametrize("wd", [0.0, 1e-4, 0.5])
def test_one_step_equals_larc_formula(wd):
    w, g = [0.3, -1.2, 2.0, 0.05], [0.01, 0.4, -0.02, 3.0]
    assert one_step(w, g, wd) == pytest.approx(hand_update(w, g, wd), rel=1e-12, abs=1e-15)
    print(f"\nwd={wd}: LARS {one_step(w, g, wd)}  hand {hand_update(w, g, wd)}")


@pytest.mark.parametrize("w,g", [([0.0, 0.0, 0.0], [0.5, -1.0, 2.0]), ([0.4, -0.3, 1.0], [0.0, 0.0, 0.0])])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_zero_norm_parameters_take_a_plain_sgd_step(w, g, wd):
    assert one_step(w, g, wd) == pytest.approx(hand_update(w, g, wd), rel=1e-12, abs=1e-15)


def test_clip_option_matches_apex_clip():
    w, g = [0.3, -1.2, 2.0], [0.01, 0.4, -0.02]
    assert one_step(w, g, 0.01, clip=True) == pytest.approx(hand_update(w, g, 0.01, clip=True), rel=1e-12)


def test_momentum_accumulates_scaled_updates():
    w0, g0, g1 = [1.0, 2.0], [0.5, -0.5], [0.1, 0.3]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LARS([p], lr=LR, momentum=MOMENTUM, weight_decay=0.0)
    p.grad = torch.tensor(g0, dtype=torch.float64)
    opt.step()
    w1 = p.detach().tolist()
    p.grad = torch.tensor(g1, dtype=torch.float64)
    opt.step()

    def scaled(w, g):
        local = TRUST * math.hypot(*w) / (math.hypot(*g) + EPS)
        return [gi * local for gi in g]

    buf = [MOMENTUM * a + b for a, b in zip(scaled(w0, g0), scaled(w1, g1))]
    assert p.detach().tolist() == pytest.approx([wi - LR * bi for wi, bi in zip(w1, buf)], rel=1e-12)


def test_exclude_1d_skips_adaptation_and_weight_decay_for_biases():
    weight = torch.nn.Parameter(torch.tensor([[0.3, -1.2], [2.0, 0.05]], dtype=torch.float64))
    bias = torch.nn.Parameter(torch.tensor([0.7, -0.2], dtype=torch.float64))
    weight.grad = torch.tensor([[0.01, 0.4], [-0.02, 3.0]], dtype=torch.float64)
    bias.grad = torch.tensor([0.5, 0.25], dtype=torch.float64)
    LARS([weight, bias], lr=LR, momentum=MOMENTUM, weight_decay=0.1, exclude_1d=True).step()
    assert bias.detach().tolist() == pytest.approx([0.7 - LR * 0.5, -0.2 - LR * 0.25], rel=1e-12)
    expected = hand_update([0.3, -1.2, 2.0, 0.05], [0.01, 0.4, -0.02, 3.0], 0.1)
    assert weight.detach().flatten().tolist() == pytest.approx(expected, rel=1e-12)


def test_two_steps_worked_out_by_hand():
    """apex LARC (trust 0.001, clip False) wrapping SGD(lr 1.6, momentum 0.9), numbers worked on paper.

    w = (3, 4), |w| = 5; g = (0.6, 0.8), |g| = 1. Step 1: local lr 0.001 * 5 / 1 = 0.005, update (0.003, 0.004),
    w1 = w - 1.6 * update = (2.9952, 3.9936). With weight decay 0.1: local 0.005 / (1 + 0.1 * 5) and
    g + 0.1 w = (0.9, 1.2) give the same update. Step 2 (no weight decay), same g: |w1| = 4.992, update
    (0.0029952, 0.0039936), momentum buffer 0.9 * (0.003, 0.004) + update = (0.0056952, 0.0075936),
    w2 = w1 - 1.6 * buffer = (2.98608768, 3.98145024). A zero bias takes a plain step: 0 - 1.6 * (0.5, -0.25).
    """
    for wd, second in ((0.0, [2.98608768, 3.98145024]), (0.1, None)):
        w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
        b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = LARS([w, b], lr=1.6, momentum=0.9, weight_decay=wd)
        w.grad, b.grad = torch.tensor([0.6, 0.8], dtype=torch.float64), torch.tensor([0.5, -0.25], dtype=torch.float64)
        opt.step()
        assert w.detach().tolist() == pytest.approx([2.9952, 3.9936], rel=1e-7)
        assert b.detach().tolist() == pytest.approx([-0.8, 0.4], rel=1e-12)
        if second:
            w.grad, b.grad = torch.tensor([0.6, 0.8], dtype=torch.float64), None
            opt.step()
            assert w.detach().tolist() == pytest.approx(second, rel=1e-7)
