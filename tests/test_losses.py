"""The DPO / SFT objectives against hand computations on fixed tensors."""

import math

import pytest
import torch

from aifeedback.losses import LOSSES, get_loss, list_losses
from aifeedback.losses.base import denoising_mse
from aifeedback.losses.dpo import dpo, sft


@pytest.mark.numerics
def test_dpo_matches_hand_computation_batch_of_two():
    mw, ml = torch.tensor([0.30, 0.50]), torch.tensor([0.40, 0.45])
    rw, rl = torch.tensor([0.35, 0.50]), torch.tensor([0.40, 0.50])
    beta = 10.0
    # pair 0: model_diff -0.10, ref_diff -0.05 -> inside = -0.5*10*(-0.05) = 0.25
    # pair 1: model_diff  0.05, ref_diff  0.00 -> inside = -0.5*10*(0.05)  = -0.25
    expected = (math.log1p(math.exp(-0.25)) + math.log1p(math.exp(0.25))) / 2  # mean OUTSIDE the logsigmoid
    out = dpo(mw, ml, rw, rl, beta)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() != pytest.approx(math.log(2), abs=1e-3)  # mean inside would give exactly ln 2 here
    assert out.metrics["implicit_acc"].item() == pytest.approx(0.5)
    assert out.metrics["reward_margin"].item() == pytest.approx(0.0, abs=1e-6)
    assert out.metrics["mse_model_w"].item() == pytest.approx(0.40)
    assert out.metrics["mse_ref_l"].item() == pytest.approx(0.45)


@pytest.mark.numerics
def test_dpo_at_policy_equals_reference_is_ln2():
    m = torch.rand(5)
    out = dpo(m, m.flip(0), m.clone(), m.flip(0).clone(), 5000.0)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert out.metrics["implicit_acc"].item() == 0.5  # exact ties count half


@pytest.mark.numerics
def test_swapping_winner_and_loser_flips_the_gradient():
    mw = torch.tensor([0.30, 0.52], requires_grad=True)
    ml = torch.tensor([0.41, 0.45], requires_grad=True)
    rw, rl = torch.tensor([0.35, 0.50]), torch.tensor([0.40, 0.50])
    dpo(mw, ml, rw, rl, 7.0).loss.backward()
    g_w, g_l = mw.grad.clone(), ml.grad.clone()
    assert (g_w > 0).all() and (g_l < 0).all()  # lowering the winner's error lowers the loss
    mw.grad = ml.grad = None
    dpo(ml, mw, rl, rw, 7.0).loss.backward()  # same numbers, roles swapped
    assert (mw.grad < 0).all() and (ml.grad > 0).all()
    # hand derivative of pair 0: d loss / d mw0 = 1/B * sigmoid(-inside) * 0.5 * beta
    inside0 = -0.5 * 7.0 * ((0.30 - 0.41) - (0.35 - 0.40))
    assert g_w[0].item() == pytest.approx(0.5 * torch.sigmoid(torch.tensor(-inside0)).item() * 3.5, rel=1e-5)


def test_sft_is_winner_mse_and_registry_lists_losses():
    mw, ml = torch.tensor([0.2, 0.4]), torch.tensor([0.9, 0.9])
    assert sft(mw, ml, None, None, 1.0).loss.item() == pytest.approx(0.3)
    assert set(list_losses()) == set(LOSSES) == {"dpo", "sft", "hinge", "ipo", "mapo", "kto"}
    assert get_loss("dpo")[1] is True and get_loss("sft")[1] is False
    with pytest.raises(ValueError, match="valid: .*dpo.*mapo"):
        get_loss("orpo")


def test_denoising_mse_is_per_sample():
    pred, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    target[1] *= 2
    assert denoising_mse(pred, target).tolist() == [1.0, 4.0]


def test_train_config_loss_choices_match_registry():
    import typing

    from aifeedback.config import fields
    from aifeedback.stages.train import TrainConfig

    tp = dict((f.name, t) for f, t in fields(TrainConfig))["loss"]
    assert set(typing.get_args(tp)) == set(LOSSES)


# ---- hinge, IPO, MaPO ------------------------------------------------------------------------------------------

MW, ML = torch.tensor([0.30, 0.50]), torch.tensor([0.40, 0.45])
RW, RL = torch.tensor([0.35, 0.50]), torch.tensor([0.40, 0.50])
# as in the DPO test: pair 0 h = ref_diff - model_diff = 0.05, pair 1 h = -0.05; inside = 0.5*beta*h


@pytest.mark.numerics
def test_hinge_matches_hand_computation_and_is_one_at_step0():
    from aifeedback.losses.dpo import hinge

    out = hinge(MW, ML, RW, RL, 100.0)  # inside = 50*h: 2.5 (past the margin: 0) and -2.5 (3.5)
    assert out.loss.item() == pytest.approx((0.0 + 3.5) / 2, abs=1e-5)  # fp32 rounding of 0.05 * 50
    assert out.metrics["implicit_acc"].item() == pytest.approx(0.5)
    m = torch.rand(4)
    assert hinge(m, m.flip(0), m.clone(), m.flip(0).clone(), 5000.0).loss.item() == 1.0  # policy == reference


@pytest.mark.numerics
def test_ipo_matches_hand_computation_in_the_usual_parameterisation():
    from aifeedback.losses.dpo import ipo

    beta = 10.0  # tau = beta / 2 = 5: target margin h = 1/(2*tau) = 0.1
    expected = ((0.05 - 0.1) ** 2 + (-0.05 - 0.1) ** 2) / 2
    out = ipo(MW, ML, RW, RL, beta)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["reward_margin"].item() == pytest.approx(0.0, abs=1e-6)  # same inside as DPO
    m = torch.rand(4)
    step0 = ipo(m, m.flip(0), m.clone(), m.flip(0).clone(), 5000.0).loss.item()
    assert step0 == pytest.approx((1 / (2 * 2500.0)) ** 2, rel=1e-6)  # (1/(2 tau))^2 = 1/beta^2 = 4e-8


def test_ipo_pulls_the_margin_to_its_target_not_beyond():
    from aifeedback.losses.dpo import ipo

    mw = torch.tensor([0.30], requires_grad=True)
    # h = (0.40 - 0.50) - (0.30 - 0.41) = 0.01 (below the target 0.1 at beta 10): lowering e_w helps
    ipo(mw, torch.tensor([0.41]), torch.tensor([0.40]), torch.tensor([0.50]), 10.0).loss.backward()
    assert mw.grad.item() > 0
    mw.grad = None
    # h = 0.21, past the target: IPO pushes back (the sigmoid never would)
    ipo(mw, torch.tensor([0.61]), torch.tensor([0.40]), torch.tensor([0.50]), 10.0).loss.backward()
    assert mw.grad.item() < 0


def _official_mapo(e_w, e_l, beta, s=0.5, T=1000):
    """The formula as mapo-t2i/mapo utils.compute_loss writes it (exp(x) - 1), in float64."""
    e_w, e_l = e_w.double(), e_l.double()
    log_odds = (s * e_w) / (torch.exp(s * e_w) - 1) - (s * e_l) / (torch.exp(s * e_l) - 1)
    return e_w.mean() - beta * torch.nn.functional.logsigmoid(log_odds * T).mean()


@pytest.mark.numerics
def test_mapo_matches_hand_computation_and_official_formula():
    from aifeedback.losses.mapo import mapo

    # hand: f(e) = 0.5e/(exp(0.5e)-1); pair 0: f(0.30) - f(0.40) = 0.926874 - 0.903331 = 0.023543, times T 23.5,
    # logsigmoid ~ -6e-11; pair 1: f(0.50) - f(0.45) = -0.011512, times T -11.5, logsigmoid ~ -11.512
    f = lambda e: 0.5 * e / math.expm1(0.5 * e)  # noqa: E731
    lo = [f(0.30) - f(0.40), f(0.50) - f(0.45)]
    ls = [-math.log1p(math.exp(-1000 * x)) if x > 0 else 1000 * x - math.log1p(math.exp(1000 * x)) for x in lo]
    expected = 0.40 - 0.1 * sum(ls) / 2
    out = mapo(MW, ML, None, None, 0.1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)  # fp32 vs float64 hand computation
    assert out.loss.item() == pytest.approx(_official_mapo(MW, ML, 0.1).item(), rel=1e-5)
    assert out.metrics["implicit_acc"].item() == 0.5
    assert out.loss.item() == pytest.approx(out.metrics["mse_model_w"].item() + out.metrics["margin_loss"].item())
    assert "mse_ref_w" not in out.metrics


@pytest.mark.numerics
def test_mapo_step0_with_equal_errors_is_winner_mse_plus_beta_ln2():
    from aifeedback.losses.mapo import mapo

    e = torch.tensor([0.2, 0.0, 0.7])  # 0 error: the limit 1 of s*e/(exp(s*e)-1), not NaN
    out = mapo(e, e.clone(), None, None, 0.1)
    assert out.loss.item() == pytest.approx(e.mean().item() + 0.1 * math.log(2), rel=1e-6)
    mw = torch.tensor([0.3], requires_grad=True)
    mapo(mw, torch.tensor([0.3]), None, None, 0.1).loss.backward()
    assert torch.isfinite(mw.grad).all() and mw.grad.item() > 0


def test_registry_lists_the_new_losses_with_their_reference_needs():
    assert {"hinge", "ipo", "mapo"} <= set(list_losses())
    assert get_loss("hinge")[1] is True and get_loss("ipo")[1] is True and get_loss("mapo")[1] is False
