"""`aif rl`'s update: `--inner-epochs` passes of optimizer steps over an epoch's `Rollout`
(stages/rl_rollout.py), each step over `--batch-size` trajectories accumulating the loss of every trained step:
grpo here (the stored SDE / DDIM eta 1 steps and their log-probs), nft and awm in stages/rl_matching.py.

With several processes each one steps over its own trajectories (the same number on each), DDP averaging the
gradients once per optimizer step; the epoch's metrics are then averaged over the processes, the `*_dev` checks
(and the first update's) take their maximum, so `ratio_dev_first` = 0 means 0 on every process.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Optional

import torch
import torch.distributed as dist

from aifeedback.errors import AifError
from aifeedback.losses.base import LossOutput
from aifeedback.stages import rl_matching
from aifeedback.stages.rl_rollout import Rollout, policy_step, reference, rows
from aifeedback.stages.train_guard import clip_gradients, finite_update

# the metric whose value at the first update of an epoch must be exactly 0 (logged as NAME_first)
FIRST_CHECK = {"grpo": "ratio_dev", "nft": "v_dev", "awm": "ratio_dev"}


@torch.no_grad()
def reference_step(r: Any, x: torch.Tensor, k: torch.Tensor, cond: dict[str, torch.Tensor], x_next: torch.Tensor):
    """The reference's step (the base model: rl_rollout.reference) to the stored x_next, for the KL term."""
    with reference(r) as model:
        return policy_step(r, x, k, cond, model=model, prev_sample=x_next)


def grpo_term(r: Any, rollout: Rollout, i: int, j: int, cond: dict[str, torch.Tensor],
              adv: torch.Tensor) -> LossOutput:
    """grpo's loss of trajectories i..i+batch_size at their j-th trained step k (one per row): the stored step
    x_k -> x_k+1 recomputed with its log-prob, against the stored log-prob."""
    cfg = r.cfg
    sl = slice(i, i + cfg.batch_size)
    k = rollout.train_steps[sl, j]
    at = torch.arange(len(k))
    x, x_next = rollout.latents[sl][at, k], rollout.latents[sl][at, k + 1]
    step = policy_step(r, x, k, cond, prev_sample=x_next)
    kl = {}
    if cfg.kl_beta > 0:
        kl = dict(beta=cfg.kl_beta, prev_sample_mean=step.prev_sample_mean, std_dev_t=step.std_dev_t,
                  prev_sample_mean_ref=reference_step(r, x, k, cond, x_next).prev_sample_mean)
    return r.loss_fn(step.log_prob, rollout.log_probs[sl][at, k], adv, clip_range=cfg.ppo_clip,
                     adv_clip_max=cfg.adv_clip_max, **kl)


def check_distribution(distributed_type: Any) -> None:
    """Refuse a distribution the update cannot run under: DeepSpeed (accelerate's backward steps DeepSpeed's engine
    at every call, and an optimizer step here accumulates one backward per trained denoising step)."""
    if str(getattr(distributed_type, "value", distributed_type)) == "DEEPSPEED":
        raise AifError("aif rl under DeepSpeed: accelerate's backward steps DeepSpeed's optimizer at every call, and "
                       "each aif rl optimizer step accumulates one backward per trained denoising step. Fix: launch "
                       "with DDP (accelerate launch --multi_gpu) or FSDP (--use_fsdp)")


def update(r: Any, rollout: Rollout) -> dict[str, float]:
    """--inner-epochs passes of optimizer steps over the rollout; returns the mean metrics and the first update's
    check (`ratio_dev_first` or `v_dev_first`, see FIRST_CHECK)."""
    cfg = r.cfg
    sums: dict[str, float] = {}
    first: Optional[float] = None
    check = FIRST_CHECK[cfg.algorithm]
    n, count = len(rollout.latents), 0  # this process's trajectories
    for _ in range(cfg.inner_epochs):
        for i in range(0, n, cfg.batch_size):
            metrics, norm = optimizer_step(r, rollout, i)
            if first is None:
                first = metrics[check]
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            if norm is not None:
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
    out = {k: v / count for k, v in sums.items()}
    out[f"{check}_first"] = first
    return across_processes(r, out)


def across_processes(r: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Every process's metrics combined (the same keys on each): the mean, the maximum for the `*_dev` checks."""
    if r.accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    dev = [k.endswith("_dev") or k.endswith("_dev_first") for k in keys]
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=r.device)
    highest = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    mean = values / r.accelerator.num_processes
    return {k: float(highest[i] if dev[i] else mean[i]) for i, k in enumerate(keys)}


def optimizer_step(r: Any, rollout: Rollout, i: int) -> tuple[dict[str, float], Optional[torch.Tensor]]:
    """One optimizer step over trajectories i..i+batch_size: the loss of every trained step, accumulated (each
    divided by their number); metrics are means over the steps, the `*_dev` checks their maximum."""
    cfg, acc = r.cfg, r.accelerator
    cond, adv = rows(r, rollout.conditioning, i), rollout.own_advantages[i:i + cfg.batch_size].to(r.device)
    term = grpo_term if cfg.algorithm == "grpo" else rl_matching.term
    metrics: dict[str, float] = {}
    finite, n = True, rollout.train_steps.shape[1]
    for j in range(n):
        # DDP: gradients accumulate locally and are averaged over the processes once, at the last step's backward
        with acc.no_sync(r.model) if j < n - 1 else nullcontext():
            loss, m = term(r, rollout, i, j, cond, adv)
            finite &= bool(torch.isfinite(loss.detach()))
            acc.backward(loss / n)
        for key, value in m.items():
            v = value.item()
            metrics[key] = max(metrics.get(key, 0.0), v) if key.endswith("_dev") else metrics.get(key, 0.0) + v / n
    norm = clip_gradients(acc, r.model, r.params, cfg.max_grad_norm or math.inf)
    if finite_update(acc, norm, finite, r.state, r.state["step"] + 1, cfg.skip_nonfinite, r.out, r._say):
        r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    r.lr_sched.step()
    if r.ema is not None:
        r.ema.step()
    r.state["step"] += 1
    return metrics, norm
