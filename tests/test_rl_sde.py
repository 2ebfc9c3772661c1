"""rl/sde.py: the flow SDE step (flow_grpo sde_step_with_logprob) and DDPO's DDIM step (ddpo-pytorch
ddim_step_with_logprob), against hand computations and against the references' steps re-derived here."""

import math

import pytest
import torch

from aifeedback.rl.objectives import grpo
from aifeedback.rl.sde import ddim_step, flow_ode_step, flow_sde_step, flow_step

LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class FlowSchedule:
    """What sde_step_with_logprob reads from FlowMatchEulerDiscreteScheduler: sigmas (with the final 0) and the
    timesteps (sigma * 1000) it looks the step index up by. Shift 3 as SD3's scheduler config."""

    def __init__(self, steps=10, shift=3.0):
        s = torch.linspace(1.0, 1.0 / steps, steps)
        s = shift * s / (1 + (shift - 1) * s)
        self.sigmas = torch.cat([s, torch.zeros(1)])
        self.timesteps = s * 1000

    def index_for_timestep(self, t):
        return (self.timesteps == t).nonzero().item()


def reference_sde_step(sched, model_output, timestep, sample, noise_level, prev_sample=None, noise=None):
    """flow_grpo's sde_step_with_logprob, re-derived line by line (view to the sample's rank instead of 4-D)."""
    model_output, sample = model_output.float(), sample.float()
    shape = (-1,) + (1,) * (sample.dim() - 1)
    step_index = [sched.index_for_timestep(t) for t in timestep]
    sigma = sched.sigmas[step_index].view(shape)
    sigma_prev = sched.sigmas[[i + 1 for i in step_index]].view(shape)
    sigma_max = sched.sigmas[1].item()
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    mean = (sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
            + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt)
    if prev_sample is None:
        prev_sample = mean + std_dev_t * torch.sqrt(-1 * dt) * noise
    log_prob = (-((prev_sample.detach() - mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
                - torch.log(std_dev_t * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean, std_dev_t


def test_flow_sde_step_by_hand():
    x, v, eps = torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[1.0]])
    step = flow_sde_step(v, x, 0.5, 0.25, sigma_max=0.9, noise_level=0.7, noise=eps)
    # std = 0.7 sqrt(0.5 / 0.5) = 0.7; dt = -0.25; scale = 0.7 * 0.5
    mean = 1.0 * (1 + 0.49 / 1.0 * -0.25) + 0.5 * (1 + 0.49 * 0.5 / 1.0) * -0.25
    assert mean == pytest.approx(0.721875)
    assert step.prev_sample_mean.item() == pytest.approx(mean) and step.prev_sample.item() == pytest.approx(mean + 0.35)
    assert step.std_dev_t.item() == pytest.approx(0.7)
    assert step.log_prob.item() == pytest.approx(-0.5 - math.log(0.35) - LOG_SQRT_2PI, rel=1e-6)


def test_flow_sde_first_step_uses_sigma_max_where_sigma_is_one():
    x, v = torch.tensor([[[2.0]]]), torch.tensor([[[1.0]]])
    step = flow_sde_step(v, x, 1.0, 0.8, sigma_max=0.9, noise_level=0.7, noise=torch.zeros(1, 1, 1))
    std = 0.7 * math.sqrt(1.0 / (1 - 0.9))  # not the division by zero 1 / (1 - 1)
    assert step.std_dev_t.item() == pytest.approx(std, rel=1e-6)
    assert step.prev_sample_mean.item() == pytest.approx(2.0 * (1 + std**2 / 2 * -0.2) + 1.0 * -0.2, rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (3, 4, 8, 8), (2, 16, 6), (1, 16, 6)])
def test_flow_sde_step_equals_flow_grpo(shape):
    sched = FlowSchedule()
    g = torch.Generator().manual_seed(sum(shape))
    index = torch.tensor([0, 3, 9][: shape[0]] if shape[0] > 1 else [0])  # includes s == 1 and the last step
    timestep = sched.timesteps[index]
    x, v, eps = (torch.randn(shape, generator=g) for _ in range(3))
    ref = reference_sde_step(sched, v, timestep, x, 0.7, noise=eps)
    ours = flow_sde_step(v, x, sched.sigmas[index], sched.sigmas[index + 1], sched.sigmas[1].item(), 0.7, noise=eps)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    given = torch.randn(shape, generator=g)  # an arbitrary stored next sample
    torch.testing.assert_close(flow_sde_step(v, x, sched.sigmas[index], sched.sigmas[index + 1],
                                             sched.sigmas[1].item(), 0.7, prev_sample=given).log_prob,
                               reference_sde_step(sched, v, timestep, x, 0.7, prev_sample=given)[1])


def test_bf16_inputs_are_computed_in_fp32_and_the_recomputed_ratio_is_exactly_one():
    sched = FlowSchedule()
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 4, 4, generator=g).bfloat16(), torch.randn(2, 4, 4, 4, generator=g).bfloat16()
    s, s_next, smax = sched.sigmas[[0, 4]], sched.sigmas[[1, 5]], sched.sigmas[1].item()
    sampled = flow_sde_step(v, x, s, s_next, smax, 0.7, generator=torch.Generator().manual_seed(2))
    assert sampled.prev_sample.dtype == sampled.log_prob.dtype == torch.float32
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    again = flow_sde_step(v, x, s, s_next, smax, 0.7, noise=noise)
    assert torch.equal(sampled.prev_sample, again.prev_sample)  # the generator draws float32 noise
    fp32 = flow_sde_step(v.float(), x.float(), s, s_next, smax, 0.7, prev_sample=sampled.prev_sample)
    recomputed = flow_sde_step(v, x, s, s_next, smax, 0.7, prev_sample=sampled.prev_sample)
    assert torch.equal(recomputed.log_prob, sampled.log_prob) and torch.equal(fp32.log_prob, sampled.log_prob)
    out = grpo(recomputed.log_prob, sampled.log_prob, torch.tensor([1.0, -1.0]))
    assert out.metrics["ratio_dev"].item() == 0.0 and out.metrics["ratio_mean"].item() == 1.0


def test_ode_steps_outside_the_window_have_no_log_prob():
    x, v = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    ode = flow_ode_step(v, x, torch.tensor([0.8, 0.6]), torch.tensor([0.6, 0.4]))
    torch.testing.assert_close(ode.prev_sample, x - 0.2 * v)
    assert ode.log_prob is None and (ode.std_dev_t == 0).all()
    zero_noise = flow_sde_step(v, x, torch.tensor([0.8, 0.6]), torch.tensor([0.6, 0.4]), 0.9, noise_level=0.0)
    assert zero_noise.log_prob is None and torch.equal(zero_noise.prev_sample, ode.prev_sample)
    assert flow_step(v, x, 0.8, 0.6, 0.9, 0.7, stochastic=False).log_prob is None
    assert flow_step(v, x, 0.8, 0.6, 0.9, 0.7, stochastic=True, noise=torch.zeros_like(x)).log_prob.shape == (2,)


def test_flow_ode_step_equals_diffusers_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    x, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    expected = sched.step(v, sched.timesteps[2], x).prev_sample
    torch.testing.assert_close(flow_ode_step(v, x, sched.sigmas[2], sched.sigmas[3]).prev_sample, expected)


# ---- DDIM (DDPO) ----

def sd_alphas_cumprod(T=1000):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float32) ** 2  # SD's scaled_linear
    return torch.cumprod(1.0 - betas, dim=0)


def reference_ddim_step(alphas_cumprod, T, n, model_output, timestep, sample, eta, prev_sample=None, noise=None,
                        clip=None):
    """ddpo-pytorch's ddim_step_with_logprob (epsilon prediction), re-derived line by line."""
    def left_broadcast(t, shape):
        return t.reshape(t.shape + (1,) * (len(shape) - t.ndim)).broadcast_to(shape)

    prev_timestep = torch.clamp(timestep - T // n, 0, T - 1)
    alpha_prod_t = left_broadcast(alphas_cumprod.gather(0, timestep), sample.shape)
    alpha_prod_t_prev = left_broadcast(torch.where(prev_timestep >= 0, alphas_cumprod.gather(0, prev_timestep),
                                                   alphas_cumprod[0]), sample.shape)
    beta_prod_t = 1 - alpha_prod_t
    pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
    if clip is not None:
        pred_original_sample = pred_original_sample.clamp(-clip, clip)
    a_t, a_prev = alphas_cumprod.gather(0, timestep), alphas_cumprod.gather(0, prev_timestep)
    variance = ((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)
    std_dev_t = left_broadcast(eta * variance**0.5, sample.shape)
    mean = alpha_prod_t_prev**0.5 * pred_original_sample + (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * model_output
    if prev_sample is None:
        prev_sample = mean + std_dev_t * noise
    log_prob = (-((prev_sample.detach() - mean) ** 2) / (2 * std_dev_t**2) - torch.log(std_dev_t)
                - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean


def test_ddim_step_by_hand():
    ac = torch.full((10,), 0.5)
    ac[4], ac[2] = 0.64, 0.81
    step = ddim_step(torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.tensor([4]), ac, num_inference_steps=5,
                     noise=torch.tensor([[2.0]]))
    x0 = (1.0 - 0.6 * 0.5) / 0.8  # 0.875
    std = math.sqrt((1 - 0.81) / (1 - 0.64) * (1 - 0.64 / 0.81))
    mean = 0.9 * x0 + math.sqrt(1 - 0.81 - std**2) * 0.5
    assert step.prev_sample_mean.item() == pytest.approx(mean, rel=1e-6)
    assert step.std_dev_t.item() == pytest.approx(std, rel=1e-6)
    assert step.prev_sample.item() == pytest.approx(mean + 2 * std, rel=1e-6)
    assert step.log_prob.item() == pytest.approx(-2.0 - math.log(std) - LOG_SQRT_2PI, rel=1e-6)
    clipped = ddim_step(torch.tensor([[-5.0]]), torch.tensor([[1.0]]), torch.tensor([4]), ac, 5, clip_sample=1.0,
                        noise=torch.zeros(1, 1))
    assert clipped.prev_sample_mean.item() == pytest.approx(0.9 * 1.0 + math.sqrt(1 - 0.81 - std**2) * -5.0, rel=1e-6)


@pytest.mark.parametrize("shape,clip", [((1, 4, 8, 8), None), ((3, 4, 8, 8), None), ((3, 4, 8, 8), 1.0)])
def test_ddim_step_equals_ddpo(shape, clip):
    ac = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(shape[0])
    t = torch.tensor([981, 501, 1][: shape[0]])  # first, middle and last of 50 steps with steps_offset 1
    x, eps, noise = (torch.randn(shape, generator=g) for _ in range(3))
    ref = reference_ddim_step(ac, 1000, 50, eps, t, x, 1.0, noise=noise, clip=clip)
    ours = ddim_step(eps, x, t, ac, 50, eta=1.0, clip_sample=clip, noise=noise)
    for a, b in zip((ours.prev_sample, ours.log_prob, ours.prev_sample_mean), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ddim_bf16_sampled_step_recomputes_to_the_same_log_prob():
    """DDPO returns prev_sample in the input dtype (bf16), so its recomputed log-prob differs from the stored one;
    ours stays float32 and the ratio at the first update is exactly 1."""
    ac, t = sd_alphas_cumprod(), torch.tensor([981, 1])
    x, eps = torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 4, 8, 8).bfloat16()
    sampled = ddim_step(eps, x, t, ac, 50, generator=torch.Generator().manual_seed(0))
    assert sampled.prev_sample.dtype == torch.float32
    again = ddim_step(eps, x, t, ac, 50, prev_sample=sampled.prev_sample)
    assert torch.equal(again.log_prob, sampled.log_prob)
    assert grpo(again.log_prob, sampled.log_prob, torch.ones(2)).metrics["ratio_dev"].item() == 0.0


def test_ddim_step_equals_diffusers_ddim_and_eta_zero_is_deterministic():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(50)
    x, eps, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in (sched.timesteps[0], sched.timesteps[-1]):
        expected = sched.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
        ours = ddim_step(eps, x, t, sched.alphas_cumprod, 50, eta=1.0, noise=noise)
        torch.testing.assert_close(ours.prev_sample, expected, rtol=1e-5, atol=1e-5)
        det = ddim_step(eps, x, t, sched.alphas_cumprod, 50, eta=0.0)
        assert det.log_prob is None
        torch.testing.assert_close(det.prev_sample, sched.step(eps, t, x, eta=0.0).prev_sample, rtol=1e-5, atol=1e-5)


def test_ddim_step_v_prediction_and_sample_agree_with_epsilon():
    """The three parameterisations of one denoiser give one step (x0 and eps recovered from each)."""
    ac = sd_alphas_cumprod()
    t = torch.tensor([401, 401])
    x, eps, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    a = ac[401]
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    base = ddim_step(eps, x, t, ac, 50, noise=noise)
    for out, kind in ((v, "v_prediction"), (x0, "sample")):
        torch.testing.assert_close(ddim_step(out, x, t, ac, 50, prediction_type=kind, noise=noise).prev_sample,
                                   base.prev_sample, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_step(eps, x, t, ac, 50, prediction_type="flow")
