"""`aif rl`'s update: `--inner-epochs` passes of optimizer steps over an epoch's `Rollout`
(stages/rl_rollout.py), each step over `--batch-size` trajectories accumulating the loss of every trained step.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from aifeedback.stages.rl_rollout import Rollout, policy_step, rows
from aifeedback.stages.train_guard import finite_update


@torch.no_grad()
def reference_step(r: Any, x: torch.Tensor, k: int, cond: dict[str, torch.Tensor], x_next: torch.Tensor):
    """The reference's step (the base model: the network with its LoRA adapters disabled) to the stored x_next, for
    the KL term."""
    base = r.accelerator.unwrap_model(r.model)
    base.disable_adapters()
    try:
        return policy_step(r, x, k, cond, prev_sample=x_next)
    finally:
        base.enable_adapters()


def update(r: Any, rollout: Rollout) -> dict[str, float]:
    """--inner-epochs passes of optimizer steps over the rollout; returns the mean metrics and the first update's
    ratio deviation."""
    cfg = r.cfg
    sums: dict[str, float] = {}
    first: Optional[float] = None
    n, count = len(rollout.prompts), 0
    for _ in range(cfg.inner_epochs):
        for i in range(0, n, cfg.batch_size):
            metrics, norm = optimizer_step(r, rollout, i)
            if first is None:
                first = metrics["ratio_dev"]
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            if norm is not None:
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
    out = {k: v / count for k, v in sums.items()}
    out["ratio_dev_first"] = first
    return out


def optimizer_step(r: Any, rollout: Rollout, i: int) -> tuple[dict[str, float], Optional[torch.Tensor]]:
    """One optimizer step over trajectories i..i+batch_size: the loss of every denoising step, accumulated."""
    cfg, acc = r.cfg, r.accelerator
    sl = slice(i, i + cfg.batch_size)
    cond, adv = rows(r, rollout.conditioning, i), rollout.advantages[sl].to(r.device)
    metrics: dict[str, float] = {}
    finite, ratio_dev = True, 0.0
    for k in range(cfg.steps):
        x, x_next = rollout.latents[sl, k], rollout.latents[sl, k + 1]
        step = policy_step(r, x, k, cond, prev_sample=x_next)
        kl = {}
        if cfg.kl_beta > 0:
            kl = dict(beta=cfg.kl_beta, prev_sample_mean=step.prev_sample_mean, std_dev_t=step.std_dev_t,
                      prev_sample_mean_ref=reference_step(r, x, k, cond, x_next).prev_sample_mean)
        loss, m = r.loss_fn(step.log_prob, rollout.log_probs[sl, k], adv, clip_range=cfg.clip_range,
                            adv_clip_max=cfg.adv_clip_max, **kl)
        finite &= bool(torch.isfinite(loss.detach()))
        acc.backward(loss / cfg.steps)
        ratio_dev = max(ratio_dev, m["ratio_dev"].item())
        for key, value in m.items():
            metrics[key] = metrics.get(key, 0.0) + value.item() / cfg.steps
    metrics["ratio_dev"] = ratio_dev
    norm = acc.clip_grad_norm_(r.params, cfg.max_grad_norm or math.inf)
    if finite_update(acc, norm, finite, r.state, r.state["step"] + 1, cfg.skip_nonfinite, r.out, r._say):
        r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    r.lr_sched.step()
    if r.ema is not None:
        r.ema.step()
    r.state["step"] += 1
    return metrics, norm
