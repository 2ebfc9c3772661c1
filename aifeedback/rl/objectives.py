"""The per-step objectives of online RL (`aif rl --algorithm`), pure torch: GRPO/DDPO, DiffusionNFT and AWM.

Each takes what the model produced at one training step (log-probs, predictions) and the epoch's advantages, and
returns a `LossOutput` (scalar loss, detached metrics), so every formula is tested without a network. Advantages are
clamped to +-adv_clip_max inside each loss, where the references clamp them.
"""

from __future__ import annotations

import torch

from aifeedback.losses.base import LossOutput
from aifeedback.rl import AWM_WEIGHTINGS


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (flow_grpo `scripts/train_sd3.py`, ddpo-pytorch `scripts/train.py`):

        ratio = exp(logp - logp_old);  loss = mean(max(-A ratio, -A clamp(ratio, 1 - eps, 1 + eps)))

    with the references' metrics: approx_kl = 0.5 mean((logp - logp_old)^2), clipfrac (|ratio - 1| > eps) and its
    two sides, plus ratio_mean and ratio_dev = max |ratio - 1| (exactly 0 at the first update of an epoch: the check
    that the recomputed log-prob equals the stored one)."""
    diff = log_prob - old_log_prob
    ratio = torch.exp(diff)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.mean(torch.maximum(unclipped, clipped))
    r = ratio.detach()
    metrics = {
        "policy_loss": loss.detach(), "approx_kl": 0.5 * torch.mean(diff.detach() ** 2),
        "clipfrac": torch.mean(((r - 1.0).abs() > clip_range).float()),
        "clipfrac_gt_one": torch.mean((r - 1.0 > clip_range).float()),
        "clipfrac_lt_one": torch.mean((1.0 - r > clip_range).float()),
        "ratio_mean": r.mean(), "ratio_dev": (r - 1.0).abs().max(),
    }
    return loss, metrics


def mean_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std_dev_t: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's KL to the reference: mean over samples of mean((mean - mean_ref)^2) / (2 std_dev_t^2), with the
    step's std_dev_t as upstream uses it (flow: before the sqrt(-dt) factor, so this is the Gaussian KL of the step
    times |dt|; DDIM: the step's own std, so it is that KL)."""
    per_sample = _per_sample_mean((mean.float() - mean_ref.float()) ** 2)
    return torch.mean(per_sample / (2 * std_dev_t.reshape(-1).float() ** 2))


def grpo(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float = 1e-4,
         adv_clip_max: float = 5.0, beta: float = 0.0, prev_sample_mean: torch.Tensor | None = None,
         prev_sample_mean_ref: torch.Tensor | None = None, std_dev_t: torch.Tensor | None = None) -> LossOutput:
    """GRPO / DDPO loss of one denoising step (flow_grpo `scripts/train_sd3.py`; DDPO is the same with beta 0):

        A = clamp(advantages, +-adv_clip_max);  loss = clipped_surrogate(logp, logp_old, A, clip_range)
                                                       + beta * mean_kl(mean, mean_ref, std_dev_t)

    log-probs and advantages (B,); the means and std_dev_t from the `rl.sde` step of the policy and of the reference
    (needed when beta > 0). Defaults are Flow-GRPO's (config/base.py: clip_range 1e-4, adv_clip_max 5; beta 0.04
    GenEval/OCR, 0.01 PickScore). Step 0 (logp == logp_old, policy == reference): ratio 1, loss = -mean(A), kl 0;
    the gradient is -mean(A * d logp)."""
    adv = torch.clamp(advantages.float(), -adv_clip_max, adv_clip_max)
    loss, metrics = clipped_surrogate(log_prob.float(), old_log_prob.float(), adv, clip_range)
    if beta > 0:
        if prev_sample_mean is None or prev_sample_mean_ref is None or std_dev_t is None:
            raise ValueError("grpo with beta > 0 needs prev_sample_mean, prev_sample_mean_ref and std_dev_t")
        kl = mean_kl(prev_sample_mean, prev_sample_mean_ref, std_dev_t)
        loss = loss + beta * kl
        metrics["kl_loss"] = kl.detach()
    metrics["loss"] = loss.detach()
    return LossOutput(loss, metrics)


def flow_x0_coefficients(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(skip, out) with x0 = skip * x_t - out * v for the flow forward process x_t = (1 - t) x0 + t noise."""
    t = t.float()
    return torch.ones_like(t), t


def ddpm_x0_coefficients(alpha_cumprod_t: torch.Tensor, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(skip, out) with x0 = skip * x_t - out * pred for the DDPM forward process x_t = sqrt(a) x0 + sqrt(1 - a) eps:
    epsilon: (1 / sqrt(a), sqrt(1 - a) / sqrt(a)); v_prediction: (sqrt(a), sqrt(1 - a))."""
    a = alpha_cumprod_t.float()
    if prediction_type == "epsilon":
        return 1 / a.sqrt(), (1 - a).sqrt() / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt(), (1 - a).sqrt()
    raise ValueError(f"prediction_type '{prediction_type}': use epsilon or v_prediction")


def _x0_error(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared x0 error divided by its detached mean absolute error (clipped at 1e-5, in float64 as
    upstream): DiffusionNFT's adaptive weighting."""
    with torch.no_grad():
        weight = _per_sample_mean((x0_pred.double() - x0.double()).abs()).clip(min=1e-5)
    return _per_sample_mean((x0_pred - x0) ** 2) / weight


def nft(pred: torch.Tensor, pred_old: torch.Tensor, pred_ref: torch.Tensor | None, x0: torch.Tensor,
        x_t: torch.Tensor, x0_skip: torch.Tensor, x0_out: torch.Tensor, advantages: torch.Tensor, beta: float = 1.0,
        adv_clip_max: float = 5.0, kl_beta: float = 1e-4) -> LossOutput:
    """DiffusionNFT loss of one forward-process step (NVlabs/DiffusionNFT `scripts/train_nft_sd3.py`, adv_mode
    'all'). The model's prediction `pred` at x_t (noised from the final clean latents x0), the sampling ("old")
    policy's `pred_old` (detached here) and the reference's `pred_ref`; x0 predictions are skip * x_t - out * pred
    (`flow_x0_coefficients(t)`: x_t - t v, upstream's; `ddpm_x0_coefficients` for UNet families), with c = adv_clip_max:

        r    = clamp(clamp(A, +-c) / c / 2 + 0.5, 0, 1)
        v+   = beta v + (1 - beta) v_old;       v- = (1 + beta) v_old - beta v
        e+/- = mean((x0_pred(v+/-) - x0)^2) / detached mean|x0_pred(v+/-) - x0|       (per sample)
        loss = c * mean(r e+ / beta + (1 - r) e- / beta) + kl_beta * mean(mean((v - v_ref)^2))

    `beta` is upstream's `config.beta` (1.0 or 0.1 in config/nft.py), `kl_beta` its `config.train.beta` (1e-4).
    Mixing is affine with weights summing to 1 and x0_pred is affine in the prediction, so mixing predictions is
    mixing x0 predictions: the loss is the same for any parameterisation (velocity, epsilon, v). Step 0 (v == v_old
    == v_ref): e+ == e-, loss = c / beta * mean(e), kl 0."""
    v, v_old = pred.float(), pred_old.detach().float()
    x_t, x0 = x_t.float(), x0.float()
    skip, out = (c.float().reshape(-1, *([1] * (x0.dim() - 1))) for c in (x0_skip, x0_out))
    adv = torch.clamp(advantages.float(), -adv_clip_max, adv_clip_max)
    r = torch.clamp(adv / adv_clip_max / 2.0 + 0.5, 0, 1)
    positive = _x0_error(skip * x_t - out * (beta * v + (1 - beta) * v_old), x0)
    negative = _x0_error(skip * x_t - out * ((1.0 + beta) * v_old - beta * v), x0)
    per_sample = r * positive / beta + (1.0 - r) * negative / beta
    loss = (per_sample * adv_clip_max).mean().float()
    metrics = {"policy_loss": loss.detach(), "unweighted_policy_loss": per_sample.mean().detach().float(),
               "old_deviate": torch.mean((v.detach() - v_old) ** 2), "r_mean": r.mean().detach()}
    if pred_ref is not None:
        kl = torch.mean(_per_sample_mean((v - pred_ref.float()) ** 2))
        loss = loss + kl_beta * kl
        metrics["kl_div"] = kl.detach()
    metrics["loss"] = loss.detach()
    return LossOutput(loss, metrics)


def matching_log_prob(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, weighting: str = "ghuber",
                      ghuber_power: float = 0.25) -> torch.Tensor:
    """AWM's log-likelihood surrogate of a sample (scxue/advantage_weighted_matching `scripts/train_sd3_awm.py`
    `compute_log_prob_awm`), float64, shape (B,): with m = mean((pred - target)^2) over non-batch dims and t in
    (0, 1) (flow: sigma; UNet families: timestep / T),

        uniform: -m;  t: -m t;  t2: -m t^2;  huber: -(sqrt(m + 1e-10) - 1e-5) t;
        ghuber:  -((m + 1e-10)^p - 1e-10^p) t / p          (p = ghuber_power; the shipped configs: ghuber, 0.25)

    target is the family's training target at the noised sample (flow: noise - x0)."""
    if weighting not in AWM_WEIGHTINGS:
        raise ValueError(f"AWM weighting '{weighting}': use one of {', '.join(AWM_WEIGHTINGS)}")
    m = _per_sample_mean((pred.double() - target.double()) ** 2)
    t = t.double().reshape(-1)
    if weighting == "uniform":
        return -m
    if weighting == "t":
        return -m * t
    if weighting == "t2":
        return -m * t**2
    if weighting == "huber":
        return -(torch.sqrt(m + 1e-10) - 1e-5) * t
    eps = torch.tensor(1e-10, dtype=torch.float64, device=m.device)
    return -(torch.pow(m + eps, ghuber_power) - torch.pow(eps, ghuber_power)) * t / ghuber_power


def awm(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float = 1.0,
        adv_clip_max: float = 5.0, advantage_max: float | None = 1.0, beta: float = 0.0,
        pred: torch.Tensor | None = None, pred_ref: torch.Tensor | None = None) -> LossOutput:
    """Advantage Weighted Matching loss (Xue et al. 2025, arXiv 2509.25050; scxue/advantage_weighted_matching
    `scripts/train_sd3_awm.py`, loss_type 'exp_first', kl_weight 'Uniform'): the PPO surrogate of
    `clipped_surrogate` on the matching log-likelihood (`matching_log_prob`), one entry per (train timestep, sample):

        A = clamp(advantages, +-adv_clip_max) / adv_clip_max * advantage_max    (no rescale when advantage_max None)
        loss = clipped_surrogate(logp, logp_old, A, clip_range) + beta * mean(mean((pred - pred_ref)^2))

    On-policy (logp_old = logp detached, ratio 1) its gradient is that of mean(A * weighted matching error): the
    pretraining flow-matching / denoising loss weighted by the advantage. Defaults are the shipped configs'
    (config/dgx_awm.py: clip_range 1, advantage_max 1, beta 1e-4 to 3e-3). Step 0: ratio 1, loss = -mean(A)."""
    adv = torch.clamp(advantages.double(), -adv_clip_max, adv_clip_max)
    if advantage_max is not None:
        adv = adv / adv_clip_max * advantage_max
    loss, metrics = clipped_surrogate(log_prob.double(), old_log_prob.double(), adv, clip_range)
    loss = loss.float()
    if beta > 0:
        if pred is None or pred_ref is None:
            raise ValueError("awm with beta > 0 needs pred and pred_ref")
        kl = torch.mean(_per_sample_mean((pred.float() - pred_ref.float()) ** 2))
        loss = loss + beta * kl
        metrics["kl_loss"] = kl.detach()
    metrics = {k: v.float() for k, v in metrics.items()}
    metrics["loss"] = loss.detach()
    return LossOutput(loss, metrics)
