"""The DPO / SFT objectives against hand computations on fixed tensors."""

import math

import pytest
import torch

from aifeedback.losses import LOSSES, get_loss, list_losses
from aifeedback.losses.base import denoising_mse
from aifeedback.losses.dpo import dpo, sft


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


def test_dpo_at_policy_equals_reference_is_ln2():
    m = torch.rand(5)
    out = dpo(m, m.flip(0), m.clone(), m.flip(0).clone(), 5000.0)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert out.metrics["implicit_acc"].item() == 0.5  # exact ties count half


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
    assert set(list_losses()) == set(LOSSES) == {"dpo", "sft"}
    assert get_loss("dpo")[1] is True and get_loss("sft")[1] is False
    with pytest.raises(ValueError, match="valid: dpo, sft"):
        get_loss("ipo")


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
