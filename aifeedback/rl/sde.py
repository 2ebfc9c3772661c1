"""Stochastic denoising steps with the Gaussian log-density of the step taken: the policy of online RL, pure torch.

Every step returns a `Step` (prev_sample, log_prob, prev_sample_mean, std_dev_t), computed in float32 whatever the
input dtype (bf16 overflows in the mean, flow_grpo notes), with prev_sample returned in float32 so that recomputing the
log-prob of a stored trajectory with the same inputs gives the stored value bit for bit (ratio exactly 1).
log_prob is the per-element Gaussian log-density MEANED (not summed) over all but the batch dimension, shape (B,).

A deterministic step (flow: the Euler ODE step, outside an SDE window or with noise_level 0; DDIM: eta 0) has no
density: its `log_prob` is None (using it raises, instead of spreading the NaN/inf a zero std would give) and its
std_dev_t is 0. Latents may be 4-D (B, C, H, W) or 3-D packed (B, L, C, FLUX); per-sample scalars broadcast to both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class Step(NamedTuple):
    prev_sample: torch.Tensor  # x', float32
    log_prob: torch.Tensor | None  # (B,), float32; None for a deterministic step
    prev_sample_mean: torch.Tensor  # the Gaussian's mean, float32 (differentiable in the model output)
    std_dev_t: torch.Tensor  # (B, 1, ...) float32, upstream's std_dev_t (flow: before the sqrt(-dt) factor)


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value as float32 of shape (B, 1, ..., 1) for broadcasting against `like`."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    t = t.expand(like.shape[0]) if t.dim() == 0 else t.reshape(-1)
    return t.view(-1, *([1] * (like.dim() - 1)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, scale^2) per element, averaged over all but the batch dimension: shape (B,). x is detached
    (the sample is data; the gradient flows through the mean), as in both references."""
    log_prob = -((x.detach() - mean) ** 2) / (2 * scale**2) - torch.log(scale) - _LOG_SQRT_2PI
    return log_prob.mean(dim=tuple(range(1, log_prob.dim())))


def _noise(shape, like: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    if noise is not None:
        return noise.to(like.device, torch.float32)
    return torch.randn(shape, generator=generator, device=like.device, dtype=torch.float32)


def flow_ode_step(velocity: torch.Tensor, sample: torch.Tensor, sigma, sigma_next) -> Step:
    """The flow-matching Euler step x' = x + v * (s' - s) (diffusers' FlowMatchEulerDiscreteScheduler.step), in
    float32; deterministic, so log_prob is None and std_dev_t 0."""
    v, x = velocity.float(), sample.float()
    dt = _per_sample(sigma_next, x) - _per_sample(sigma, x)
    mean = x + v * dt
    return Step(mean, None, mean, torch.zeros_like(dt))


def flow_sde_step(velocity: torch.Tensor, sample: torch.Tensor, sigma, sigma_next, sigma_max: float,
                  noise_level: float = 0.7, prev_sample: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> Step:
    """Flow-GRPO's SDE step with log-prob (flow_grpo `flow_grpo/diffusers_patch/sd3_sde_with_logprob.py`
    `sde_step_with_logprob`), same marginals as the ODE. With s = sigma, s' = sigma_next (per sample or scalar),
    dt = s' - s < 0, a = noise_level, sigma_max = the schedule's sigmas[1] (upstream's substitute where s == 1):

        std_dev_t = a * sqrt(s / (1 - (sigma_max if s == 1 else s)))
        mean      = x * (1 + std_dev_t^2 / (2 s) * dt) + v * (1 + std_dev_t^2 * (1 - s) / (2 s)) * dt
        x'        = mean + std_dev_t * sqrt(-dt) * eps          (unless `prev_sample` is given: then x' is it)
        log_prob  = mean over non-batch dims of log N(x'; mean, (std_dev_t * sqrt(-dt))^2)

    eps is `noise` when given (tests, replay), else drawn from `generator` in float32. noise_level 0 is the plain
    Euler step (`flow_ode_step`, log_prob None)."""
    if noise_level == 0:
        return flow_ode_step(velocity, sample, sigma, sigma_next)
    v, x = velocity.float(), sample.float()
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    dt = s_next - s
    std_dev_t = torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigma_max), s))) * noise_level
    mean = x * (1 + std_dev_t**2 / (2 * s) * dt) + v * (1 + std_dev_t**2 * (1 - s) / (2 * s)) * dt
    scale = std_dev_t * torch.sqrt(-dt)
    if prev_sample is None:
        prev_sample = mean + scale * _noise(v.shape, v, noise, generator)
    prev_sample = prev_sample.float()
    return Step(prev_sample, gaussian_log_prob(prev_sample, mean, scale), mean, std_dev_t)


def flow_step(velocity: torch.Tensor, sample: torch.Tensor, sigma, sigma_next, sigma_max: float, noise_level: float,
              stochastic: bool, **kwargs) -> Step:
    """One step of a schedule with an SDE window (Flow-GRPO-Fast, MixGRPO arXiv 2507.21802): the SDE step with
    log-prob where `stochastic`, the Euler ODE step (log_prob None) elsewhere."""
    if not stochastic:
        return flow_ode_step(velocity, sample, sigma, sigma_next)
    return flow_sde_step(velocity, sample, sigma, sigma_next, sigma_max, noise_level, **kwargs)


def ddim_prev_timestep(timestep: torch.Tensor, num_train_timesteps: int, num_inference_steps: int) -> torch.Tensor:
    """t - T // n clamped to [0, T - 1], as ddpo-pytorch does (so at the last step alpha_prev = alphas_cumprod[0],
    which is diffusers' final_alpha_cumprod for schedulers with set_alpha_to_one False: SD1.5's and SDXL's)."""
    return torch.clamp(timestep - num_train_timesteps // num_inference_steps, 0, num_train_timesteps - 1)


def ddim_step(model_output: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor, alphas_cumprod: torch.Tensor,
              num_inference_steps: int, eta: float = 1.0, prediction_type: str = "epsilon",
              clip_sample: float | None = None, prev_sample: torch.Tensor | None = None,
              generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> Step:
    """DDPO's DDIM step with log-prob (ddpo-pytorch `ddpo_pytorch/diffusers_patch/ddim_with_logprob.py`
    `ddim_step_with_logprob`, DDIM paper eqs. 12 and 16). timestep (B,) or scalar integer; alphas_cumprod (T,);
    t_prev = `ddim_prev_timestep`; a = alphas_cumprod[t], a' = alphas_cumprod[t_prev]:

        x0      = (x - sqrt(1-a) eps) / sqrt(a)    (epsilon; 'sample': x0 = out; 'v_prediction':
                  x0 = sqrt(a) x - sqrt(1-a) out, eps = sqrt(a) out + sqrt(1-a) x), then clamped to +-clip_sample
                  when given (the scheduler's clip_sample_range; eps is NOT re-derived from the clamped x0, as
                  upstream's default use_clipped_model_output=False)
        std     = eta * sqrt((1 - a') / (1 - a) * (1 - a / a'))
        mean    = sqrt(a') x0 + sqrt(1 - a' - std^2) eps
        x'      = mean + std * noise        (unless `prev_sample` is given)
        log_prob = mean over non-batch dims of log N(x'; mean, std^2)

    eta 1 is DDPO's stochastic policy; eta 0 is deterministic DDIM (log_prob None). Dynamic thresholding
    (`thresholding` in a scheduler config) is not supported; a caller must refuse such a scheduler."""
    out, x = model_output.float(), sample.float()
    t = torch.as_tensor(timestep, device=x.device).long().reshape(-1).expand(x.shape[0])
    ac = alphas_cumprod.to(x.device, torch.float32)
    prev = ddim_prev_timestep(t, len(ac), num_inference_steps)
    a, a_prev = _per_sample(ac[t], x), _per_sample(ac[prev], x)
    if prediction_type == "epsilon":
        x0, eps = (x - (1 - a) ** 0.5 * out) / a**0.5, out
    elif prediction_type == "sample":
        x0, eps = out, (x - a**0.5 * out) / (1 - a) ** 0.5
    elif prediction_type == "v_prediction":
        x0, eps = a**0.5 * x - (1 - a) ** 0.5 * out, a**0.5 * out + (1 - a) ** 0.5 * x
    else:
        raise ValueError(f"prediction_type '{prediction_type}': use epsilon, sample or v_prediction")
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    std = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
    mean = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    if eta == 0:
        return Step(mean, None, mean, std)
    if prev_sample is None:
        prev_sample = mean + std * _noise(out.shape, out, noise, generator)
    prev_sample = prev_sample.float()
    return Step(prev_sample, gaussian_log_prob(prev_sample, mean, std), mean, std)
