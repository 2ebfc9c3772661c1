"""rl/objectives.py (GRPO/PPO + KL, DiffusionNFT, AWM) and the ALGORITHMS registry, against hand computations and
against the references' loss code re-derived here (flow_grpo train_sd3.py, DiffusionNFT train_nft_sd3.py,
advantage_weighted_matching train_sd3_awm.py)."""

import math
import sys

import pytest
import torch

from aifeedback.errors import AifError
from aifeedback.rl import ALGORITHMS, AWM_WEIGHTINGS, FAMILY_KINDS, list_algorithms
from aifeedback.rl.objectives import (
    awm,
    clipped_surrogate,
    ddpm_x0_coefficients,
    flow_x0_coefficients,
    grpo,
    matching_log_prob,
    mean_kl,
    nft,
)
from tests.launch import run_group

SHAPES = [(1, 4, 8, 8), (3, 4, 8, 8), (2, 16, 6), (1, 16, 6)]


def test_clipped_surrogate_by_hand():
    logp, old = torch.tensor([0.0, math.log(1.5)]), torch.zeros(2)
    loss, m = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), clip_range=0.2)
    # sample 0: ratio 1 -> -1; sample 1: ratio 1.5, A = -1: max(1.5, 1.2) = 1.5
    assert loss.item() == pytest.approx((-1.0 + 1.5) / 2)
    assert m["clipfrac"].item() == 0.5 and m["clipfrac_gt_one"].item() == 0.5 and m["clipfrac_lt_one"].item() == 0
    assert m["approx_kl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2 / 2)
    assert m["ratio_mean"].item() == pytest.approx(1.25) and m["ratio_dev"].item() == pytest.approx(0.5)
    # a positive advantage with the ratio above the clip: the clipped term wins and the gradient is zero
    lp = torch.tensor([math.log(1.5)], requires_grad=True)
    clipped_surrogate(lp, torch.zeros(1), torch.tensor([1.0]), 0.2)[0].backward()
    assert lp.grad.item() == 0.0


def test_grpo_with_kl_by_hand_and_its_checks():
    mean, ref = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])
    out = grpo(torch.zeros(1), torch.zeros(1), torch.tensor([7.0]), adv_clip_max=5.0, beta=0.1,
               prev_sample_mean=mean, prev_sample_mean_ref=ref, std_dev_t=torch.tensor([[2.0]]))
    kl = (1.0 + 4.0) / 2 / (2 * 4.0)  # mean((mu - mu_ref)^2) / (2 std^2)
    assert out.metrics["kl_loss"].item() == pytest.approx(kl)
    assert out.loss.item() == pytest.approx(-5.0 + 0.1 * kl)  # the advantage 7 is clamped to 5
    with pytest.raises(ValueError, match="beta > 0 needs"):
        grpo(torch.zeros(1), torch.zeros(1), torch.ones(1), beta=0.1)


def reference_grpo(log_prob, old_log_prob, advantages, clip_range, adv_clip_max, beta, mean, mean_ref, std_dev_t):
    """flow_grpo train_sd3.py's loss of one timestep j, re-derived (mean over the non-batch dims of any rank)."""
    advantages = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))
    kl_loss = ((mean - mean_ref) ** 2).mean(dim=tuple(range(1, mean.ndim)), keepdim=True) / (2 * std_dev_t**2)
    return policy_loss + beta * torch.mean(kl_loss), 0.5 * torch.mean((log_prob - old_log_prob) ** 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_grpo_equals_flow_grpo(shape):
    g = torch.Generator().manual_seed(sum(shape))
    b = shape[0]
    logp, old = torch.randn(b, generator=g) * 0.1, torch.randn(b, generator=g) * 0.1
    adv = torch.randn(b, generator=g) * 4
    mean, mean_ref = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    std = torch.rand(b, generator=g).view(-1, *[1] * (len(shape) - 1)) + 0.1
    ref_loss, ref_kl = reference_grpo(logp, old, adv, 0.05, 5.0, 0.04, mean, mean_ref, std)
    out = grpo(logp, old, adv, clip_range=0.05, adv_clip_max=5.0, beta=0.04, prev_sample_mean=mean,
               prev_sample_mean_ref=mean_ref, std_dev_t=std)
    torch.testing.assert_close(out.loss, ref_loss)
    torch.testing.assert_close(out.metrics["approx_kl"], ref_kl)
    assert mean_kl(mean, mean, std).item() == 0.0


def test_nft_by_hand():
    x0, x_t, t = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0.5])
    v, v_old, v_ref = torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.zeros(1, 2)
    skip, out = flow_x0_coefficients(t)
    # beta 1: v+ = v = 1 -> x0+ = 0.5 - 0.5 = 0, error 1 / weight 1 = 1; v- = -v -> x0- = 1, error 0
    for adv, expected in ((5.0, 5.0), (-5.0, 0.0), (0.0, 2.5), (9.0, 5.0)):
        res = nft(v, v_old, v_ref, x0, x_t, skip, out, torch.tensor([adv]), beta=1.0, adv_clip_max=5.0, kl_beta=0.1)
        assert res.metrics["policy_loss"].item() == pytest.approx(expected)
        assert res.loss.item() == pytest.approx(expected + 0.1 * 1.0)  # kl = mean((v - v_ref)^2) = 1
    # beta 0.5: v+ = 0.5 -> x0+ = 0.25, e+ = 0.75^2 / 0.75 = 0.75; r = 1 -> c * e+ / beta = 5 * 0.75 / 0.5
    half = nft(v, v_old, None, x0, x_t, skip, out, torch.tensor([5.0]), beta=0.5)
    assert half.loss.item() == pytest.approx(7.5) and "kl_div" not in half.metrics


def reference_nft(forward_prediction, old_prediction, ref_forward_prediction, x0, xt, t, advantages, beta,
                  adv_clip_max, kl_beta):
    """DiffusionNFT train_nft_sd3.py's loss (adv_mode 'all'), re-derived."""
    t_expanded = t.view(-1, *([1] * (len(x0.shape) - 1)))
    advantages_clip = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    r = torch.clamp((advantages_clip / adv_clip_max) / 2.0 + 0.5, 0, 1)
    positive_prediction = beta * forward_prediction + (1 - beta) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + beta) * old_prediction.detach() - beta * forward_prediction
    x0_prediction = xt - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = (torch.abs(x0_prediction.double() - x0.double())
                         .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = xt - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = (torch.abs(negative_x0_prediction.double() - x0.double())
                                  .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    ori_policy_loss = r * positive_loss / beta + (1.0 - r) * negative_loss / beta
    policy_loss = (ori_policy_loss * adv_clip_max).mean()
    kl_div_loss = ((forward_prediction - ref_forward_prediction) ** 2).mean(dim=tuple(range(1, x0.ndim)))
    return policy_loss + kl_beta * torch.mean(kl_div_loss)


@pytest.mark.parametrize("beta", [1.0, 0.1])
@pytest.mark.parametrize("shape", SHAPES)
def test_nft_equals_diffusionnft(shape, beta):
    g = torch.Generator().manual_seed(sum(shape))
    b = shape[0]
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.rand(b, generator=g) * 0.9 + 0.05
    xt = (1 - t.view(-1, *[1] * (len(shape) - 1))) * x0 + t.view(-1, *[1] * (len(shape) - 1)) * noise
    v_old = noise - x0 + 0.3 * torch.randn(shape, generator=g)
    v_ref = v_old + 0.1 * torch.randn(shape, generator=g)
    v_base = v_old + 0.2 * torch.randn(shape, generator=g)
    adv = torch.randn(b, generator=g) * 4
    v_ours, v_theirs = v_base.clone().requires_grad_(), v_base.clone().requires_grad_()
    ours = nft(v_ours, v_old, v_ref, x0, xt, *flow_x0_coefficients(t), adv, beta=beta, kl_beta=1e-4)
    theirs = reference_nft(v_theirs, v_old, v_ref, x0, xt, t, adv, beta, 5.0, 1e-4)
    torch.testing.assert_close(ours.loss, theirs.float(), rtol=1e-5, atol=1e-6)
    ours.loss.backward()
    theirs.backward()
    torch.testing.assert_close(v_ours.grad, v_theirs.grad.float(), rtol=1e-4, atol=1e-7)


def test_nft_on_a_ddpm_family_is_the_same_loss_for_epsilon_and_v_prediction():
    """UNet families: one denoiser written as epsilon or as v gives the same x0 predictions, so the same NFT loss."""
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([0.9, 0.3, 0.6])
    x0, eps_true = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    ab = a.view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps_true
    eps_new, eps_old = (eps_true + 0.3 * torch.randn(3, 4, 4, 4, generator=g) for _ in range(2))

    def to_v(eps):  # the same prediction in v form: x0_hat from eps, then v = sqrt(a) eps - sqrt(1-a) x0_hat
        x0_hat = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0_hat

    adv = torch.tensor([2.0, -1.0, 0.5])
    by_eps = nft(eps_new, eps_old, None, x0, x_t, *ddpm_x0_coefficients(a, "epsilon"), adv, beta=0.1)
    by_v = nft(to_v(eps_new), to_v(eps_old), None, x0, x_t, *ddpm_x0_coefficients(a, "v_prediction"), adv, beta=0.1)
    torch.testing.assert_close(by_eps.loss, by_v.loss, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        ddpm_x0_coefficients(a, "sample")


def test_matching_log_prob_by_hand():
    pred, target, t = torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2), torch.tensor([0.5])
    m = 5.0  # mean((1, 9))
    expected = {"uniform": -m, "t": -m * 0.5, "t2": -m * 0.25, "huber": -(math.sqrt(m + 1e-10) - 1e-5) * 0.5,
                "ghuber": -((m + 1e-10) ** 0.5 - 1e-10**0.5) * 0.5 / 0.5}
    for name in AWM_WEIGHTINGS:
        got = matching_log_prob(pred, target, t, name, ghuber_power=0.5)
        assert got.dtype == torch.float64 and got.item() == pytest.approx(expected[name], rel=1e-12)
    with pytest.raises(ValueError, match="weighting"):
        matching_log_prob(pred, target, t, "Uniform")


def reference_awm_log_prob(noise_pred, random_noise, clean_latents, timestep, weighting, ghuber_power):
    """advantage_weighted_matching compute_log_prob_awm's likelihood, re-derived (their names: 'Uniform', 't**2')."""
    log_prob = -(noise_pred.double() - (random_noise.double() - clean_latents.double())) ** 2
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    if weighting == "t":
        return log_prob * timestep.view(-1)
    if weighting == "t2":
        return log_prob * timestep.view(-1) ** 2
    if weighting == "huber":
        return -(torch.sqrt(-log_prob + 1e-10) - 1e-5) * timestep.view(-1)
    if weighting == "ghuber":
        tiny = torch.tensor(1e-10, dtype=log_prob.dtype)
        return -(torch.pow(-log_prob + 1e-10, ghuber_power) - torch.pow(tiny, ghuber_power)) * timestep.view(-1) \
            / ghuber_power
    return log_prob


@pytest.mark.parametrize("shape", SHAPES)
def test_awm_equals_advantage_weighted_matching(shape):
    g = torch.Generator().manual_seed(sum(shape))
    k, b = 3, shape[0]  # 3 train timesteps of b samples, flattened timestep-major as upstream's reshape(K, B)
    x0, noise = torch.randn((k * b,) + shape[1:], generator=g), torch.randn((k * b,) + shape[1:], generator=g)
    t = torch.rand(k * b, generator=g)
    pred = (noise - x0 + 0.5 * torch.randn(x0.shape, generator=g)).bfloat16()
    pred_old = pred.float() + 0.01 * torch.randn(x0.shape, generator=g)
    for weighting in AWM_WEIGHTINGS:
        torch.testing.assert_close(matching_log_prob(pred, noise - x0, t, weighting),
                                   reference_awm_log_prob(pred, noise, x0, t, weighting, 0.25))
    logp = matching_log_prob(pred, noise - x0, t)
    old = matching_log_prob(pred_old, noise - x0, t)
    adv = torch.randn(b, generator=g) * 4
    adv_rep = adv.clamp(-5, 5).double() / 5 * 1.0
    adv_rep = adv_rep.unsqueeze(0).repeat(k, 1).view(-1)
    ratio = torch.exp(logp - old)
    policy = torch.mean(torch.maximum(-adv_rep * ratio, -adv_rep * torch.clamp(ratio, 0.0, 2.0)))
    pred_ref = pred.float() + 0.05
    kl = ((pred.float() - pred_ref) ** 2).mean(dim=tuple(range(1, len(shape)))).mean()
    out = awm(logp, old, adv.repeat(k), clip_range=1.0, beta=1e-3, pred=pred, pred_ref=pred_ref)
    torch.testing.assert_close(out.loss, (policy + 1e-3 * kl).float())


def test_awm_on_policy_gradient_is_the_advantage_weighted_matching_loss():
    g = torch.Generator().manual_seed(3)
    x0, noise, t = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g), torch.rand(4, generator=g)
    adv = torch.tensor([2.0, -1.0, 0.5, -1.5])
    pred = (noise - x0 + torch.randn(4, 3, 5, generator=g)).requires_grad_()
    logp = matching_log_prob(pred, noise - x0, t, "uniform")
    out = awm(logp, logp.detach(), adv, advantage_max=None)
    assert out.metrics["ratio_dev"].item() == 0.0 and out.loss.item() == pytest.approx(-adv.mean().item())
    grad = torch.autograd.grad(out.loss, pred)[0]
    direct = pred.detach().clone().requires_grad_()
    weighted = (adv * ((direct - (noise - x0)) ** 2).mean(dim=(1, 2))).mean()  # mean(A * flow-matching error)
    torch.testing.assert_close(grad, torch.autograd.grad(weighted, direct)[0])


def test_algorithms_registry_lists_entries_with_formula_source_and_kinds():
    assert list(ALGORITHMS) == ["grpo", "nft", "awm"] and set(list_algorithms()) == set(ALGORITHMS)
    for algo in ALGORITHMS.values():
        assert algo.formula and "arXiv" in algo.source and callable(algo.function())
        assert set(algo.kinds) | set(algo.refused) <= set(FAMILY_KINDS)
        for kind in algo.kinds:
            algo.check_kind(kind)
    with pytest.raises(AifError, match=r"--algorithm nft does not support family 'dit-x' \(dit\).*Use "):
        ALGORITHMS["nft"].check_kind("dit", family="dit-x")
    with pytest.raises(ValueError, match="Did you mean 'grpo'"):
        ALGORITHMS["gpro"]


def test_the_algorithms_registry_is_light():
    code = "import sys, aifeedback.rl; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    out = run_group([sys.executable, "-c", code], timeout=120, check=True).stdout
    assert out.strip() == "[]"
