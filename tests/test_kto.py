"""Diffusion-KTO against hand computations: the loss on fixed per-image errors, its step-0 value and gradients."""

import math

import pytest
import torch

from aifeedback.losses import LOSSES
from aifeedback.losses.kto import kto


def sig(x):
    return 1 / (1 + math.exp(-x))


MODEL, REF = torch.tensor([0.30, 0.40, 0.40]), torch.tensor([0.40, 0.42, 0.40])
DESIRABLE = torch.tensor([True, False, True])


def test_kto_matches_hand_computation():
    # g = ref - model = [0.10, 0.02, 0.00]; z = max(0, mean g) = 0.04
    # margins s * beta * (g - z), beta 10: [+10 * 0.06, -10 * (-0.02), +10 * (-0.04)] = [0.6, 0.2, -0.4]
    out = kto(MODEL, REF, DESIRABLE, 10.0)
    expected = ((1 - sig(0.6)) + (1 - sig(0.2)) + (1 - sig(-0.4))) / 3
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.04, abs=1e-6)
    assert out.metrics["implicit_acc"].item() == pytest.approx(2 / 3)  # the third image sits below z
    assert out.metrics["reward_desirable"].item() == pytest.approx(0.05, abs=1e-6)  # mean of 0.10 and 0.00
    assert out.metrics["reward_undesirable"].item() == pytest.approx(0.02, abs=1e-6)
    assert out.metrics["desirable_share"].item() == pytest.approx(2 / 3)
    # separate weights: lambda_D = 2 on the desirable images, lambda_U = 1
    weighted = kto(MODEL, REF, DESIRABLE, 10.0, desirable_weight=2.0).loss.item()
    assert weighted == pytest.approx((2 * (1 - sig(0.6)) + (1 - sig(0.2)) + 2 * (1 - sig(-0.4))) / 3, abs=1e-6)


def test_the_reference_point_is_clamped_at_zero():
    # g = [-0.10, -0.02]: mean -0.06 < 0, so z = 0 and the margins are s * beta * g = [-1.0, +0.2]
    out = kto(torch.tensor([0.5, 0.5]), torch.tensor([0.4, 0.48]), torch.tensor([True, False]), 10.0)
    assert out.metrics["kl"].item() == 0.0
    assert out.loss.item() == pytest.approx(((1 - sig(-1.0)) + (1 - sig(0.2))) / 2, abs=1e-6)


def test_step0_value_is_one_half():
    m = torch.rand(6)
    out = kto(m, m.clone(), torch.tensor([True, False] * 3), 1000.0)
    assert out.loss.item() == 0.5  # g = 0, z = 0, h = sigmoid(0): exact in floating point
    assert out.metrics["implicit_acc"].item() == 0.5


def test_gradient_pulls_desirable_errors_down_and_undesirable_up_and_swaps_with_the_labels():
    model = MODEL.clone().requires_grad_(True)
    kto(model, REF, DESIRABLE, 10.0).loss.backward()
    grad = model.grad.clone()
    assert grad[0] > 0 and grad[2] > 0 and grad[1] < 0  # gradient descent lowers desirable errors
    # hand derivative of image 1 (undesirable, margin 0.2): d/de [(1 - sigmoid(-beta (g - z)))] / B with
    # dg/de = -1 and z detached: -beta * sigmoid'(0.2) / 3
    assert grad[1].item() == pytest.approx(-10 * sig(0.2) * (1 - sig(0.2)) / 3, rel=1e-5)
    model.grad = None
    kto(model, REF, ~DESIRABLE, 10.0).loss.backward()
    assert model.grad[1] > 0 and model.grad[0] < 0


def test_kto_is_registered_as_an_unpaired_loss_with_a_reference():
    assert LOSSES["kto"].unpaired and LOSSES["kto"].needs_reference
    assert not any(LOSSES[n].unpaired for n in ("dpo", "sft", "hinge", "ipo", "mapo"))
    assert LOSSES["kto"].function() is kto
