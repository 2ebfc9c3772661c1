"""`aif rl --algorithm nft | awm`: the algorithms that train on the forward (noising) process of an epoch's final
latents x0 (DiffusionNFT, NVlabs/DiffusionNFT scripts/train_nft_sd3.py; AWM, scxue/advantage_weighted_matching
scripts/train_sd3_awm.py), so any sampler collects the data (`--sampler`, ODE by default).

At sampling time (`prepare`), for each trajectory and each of its `Rollout.train_steps` (the sampling steps chosen by
--timestep-fraction), the forward-process noise is drawn from the epoch's generator and the sampling policy's value
there is STORED (not recomputed with a copy of the pre-update weights): nft the prediction v_old, awm the matching
log-likelihood. Both are computed in the update's minibatches with the update's code path, so the first update of an
epoch sees v == v_old and ratio == 1 exactly (`v_dev_first`, `ratio_dev_first` = 0 in metrics.jsonl). The "old"
policy is therefore the policy that sampled the epoch (upstream's decay-0 old adapter). Forward process per family
kind: flow x_t = (1 - s) x0 + s noise at the step's sigma s (model timestep = the scheduler's, s * 1000), UNet
x_t = sqrt(a) x0 + sqrt(1 - a) noise at the step's DDPM timestep (a = alphas_cumprod there).
"""

from __future__ import annotations

from typing import Any

import torch

from aifeedback.losses.base import LossOutput
from aifeedback.rl.objectives import ddpm_x0_coefficients, flow_x0_coefficients, matching_log_prob
from aifeedback.stages.rl_rollout import Rollout, predict, reference, rows


def forward_process(r: Any, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """x_t of clean latents x0 (B, ...) at sampling steps k (B,) with `noise`: the model timestep `t`, x0's
    coefficients (`skip`, `out`: x0 = skip x_t - out pred), AWM's `target` and time `weight_t` in (0, 1)."""
    sampler = r.sampler
    t = sampler.timesteps[k].to(x0.device)
    shape = (-1, *([1] * (x0.dim() - 1)))
    if r.kind == "flow":
        s = sampler.sigmas[k].to(x0.device, torch.float32)
        x_t = (1 - s.view(shape)) * x0 + s.view(shape) * noise
        skip, out = flow_x0_coefficients(s)
        return dict(x_t=x_t, t=t, skip=skip, out=out, target=noise - x0, weight_t=s)
    a = sampler.alphas_cumprod.to(x0.device)[t.long()].float()
    x_t = a.sqrt().view(shape) * x0 + (1 - a).sqrt().view(shape) * noise
    kind = sampler.config.prediction_type
    skip, out = ddpm_x0_coefficients(a, kind)
    target = noise if kind == "epsilon" else a.sqrt().view(shape) * noise - (1 - a).sqrt().view(shape) * x0
    return dict(x_t=x_t, t=t, skip=skip, out=out, target=target,
                weight_t=t.float() / sampler.config.num_train_timesteps)


def _inputs(r: Any, rollout: Rollout, i: int, j: int) -> dict[str, torch.Tensor]:
    sl = slice(i, i + r.cfg.batch_size)
    x0 = rollout.latents[sl, -1].to(r.device)
    return forward_process(r, x0, rollout.train_steps[sl, j], rollout.train_noise[sl, j].to(r.device))


def _old_value(r: Any, f: dict[str, torch.Tensor], pred: torch.Tensor) -> torch.Tensor:
    if r.cfg.algorithm == "nft":
        return pred.float()
    return matching_log_prob(pred, f["target"], f["weight_t"], r.cfg.awm_weighting, r.cfg.ghuber_power)


@torch.no_grad()
def prepare(r: Any, rollout: Rollout, gens: list[torch.Generator]) -> None:
    """Draw the forward-process noise of every (trajectory, trained step) from its group's generator (`gens`, one
    per group of this process's trajectories, rl_rollout.group_generator) and store the sampling policy's value
    there (`Rollout.train_noise`, `Rollout.old`)."""
    n, steps = rollout.train_steps.shape
    shape = (n // len(gens), steps, *rollout.latents.shape[2:])
    rollout.train_noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
    old = []
    for i in range(0, n, r.cfg.batch_size):
        cond = rows(r, rollout.conditioning, i)
        per_step = []
        for j in range(steps):
            f = _inputs(r, rollout, i, j)
            per_step.append(_old_value(r, f, predict(r, f["x_t"], f["t"], cond)).cpu())
        old.append(torch.stack(per_step, 1))
    rollout.old = torch.cat(old)


@torch.no_grad()
def _reference(r: Any, f: dict[str, torch.Tensor], cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference's prediction (the base model: rl_rollout.reference) at the same input."""
    with reference(r) as model:
        return predict(r, f["x_t"], f["t"], cond, model)


def term(r: Any, rollout: Rollout, i: int, j: int, cond: dict[str, torch.Tensor], adv: torch.Tensor) -> LossOutput:
    """The nft or awm loss of trajectories i..i+batch_size at their j-th trained step, with the metric of the
    first-update check: nft `v_dev` = max |v - v_old|, awm `ratio_dev` = max |ratio - 1|."""
    cfg = r.cfg
    f = _inputs(r, rollout, i, j)
    pred = predict(r, f["x_t"], f["t"], cond)
    old = rollout.old[i:i + cfg.batch_size, j].to(r.device)
    ref = _reference(r, f, cond) if cfg.kl_beta > 0 else None
    if cfg.algorithm == "nft":
        x0 = rollout.latents[i:i + cfg.batch_size, -1].to(r.device)
        loss, m = r.loss_fn(pred, old, ref, x0, f["x_t"], f["skip"], f["out"], adv, beta=cfg.nft_beta,
                            adv_clip_max=cfg.adv_clip_max, kl_beta=cfg.kl_beta)
        m["v_dev"] = (pred.detach().float() - old).abs().max()
        return LossOutput(loss, m)
    log_prob = matching_log_prob(pred, f["target"], f["weight_t"], cfg.awm_weighting, cfg.ghuber_power)
    return r.loss_fn(log_prob, old, adv, clip_range=cfg.ppo_clip, adv_clip_max=cfg.adv_clip_max, beta=cfg.kl_beta,
                     pred=pred, pred_ref=ref)
