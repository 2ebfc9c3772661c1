"""`aif rl`'s sampling: one epoch's `Rollout` (G trajectories for each of P prompts from the current policy, scored,
with group advantages) and the policy's denoising step with its log-prob, shared by sampling and the update
(stages/rl_update.py), so the first update recomputes exactly what sampling stored. `r` is the stage's `RLRecipe`
(stages/rl.py; typed Any: importing it here would be an import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from aifeedback.families.sampling import decode_latents
from aifeedback.rl.advantages import combine_rewards, group_advantages
from aifeedback.rl.sde import ddim_step, flow_ode_step, flow_sde_step


@dataclass
class Rollout:
    """One epoch's samples: per trajectory its prompt, the latents before and after each denoising step, the
    step's log-prob, the steps the update trains, and its reward and advantage."""

    prompts: list[str]
    conditioning: dict[str, torch.Tensor]  # the prompts' encodings, one row per trajectory
    latents: torch.Tensor  # (N, steps + 1, C, h, w) float32: x_0 = noise, x_k after step k
    log_probs: torch.Tensor  # (N, steps) float32; 0 for a deterministic step (ODE sampling)
    images: list  # the decoded final images (PIL)
    raw: dict[str, torch.Tensor]  # each reward's scores, (N,)
    rewards: torch.Tensor  # (N,) combined reward
    advantages: torch.Tensor  # (N,)
    train_steps: torch.Tensor  # (N, n) long: the sampling steps the update trains, per trajectory, in order
    train_noise: Optional[torch.Tensor] = None  # nft, awm: (N, n, C, h, w) the forward process's noise
    old: Optional[torch.Tensor] = None  # nft: v_old (N, n, C, h, w); awm: the matching log-prob (N, n)
    monitor: dict[str, list[float]] = field(default_factory=dict)  # each held-out reward's scores (--monitor)


def epoch_prompts(r: Any, epoch: int) -> list[str]:
    p, n = r.cfg.prompts_per_epoch, len(r.prompts)
    return [r.prompts[(epoch * p + i) % n] for i in range(p)]


def rows(r: Any, cond: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Rows i..i+batch_size of every conditioning tensor."""
    return {k: v[i:i + r.cfg.batch_size] for k, v in cond.items()}


def choose_train_steps(cfg: Any, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, train_steps) step indices per trajectory, out of `cfg.trainable_steps`: all of them in order when all are
    trained, else the first int(count * timestep_fraction) of a random permutation per trajectory (Flow-GRPO's and
    DiffusionNFT's rule), drawn from the epoch's generator after the sampling noise, so a resumed epoch chooses the
    same steps and the trajectories do not depend on the fraction."""
    steps = torch.tensor(cfg.trainable_steps, dtype=torch.long)
    if cfg.train_steps == len(steps):
        return steps.expand(n, -1).clone()
    return torch.stack([steps[torch.randperm(len(steps), generator=gen)[:cfg.train_steps]] for _ in range(n)])


@torch.no_grad()
def sample(r: Any, epoch: int, prepare: Optional[Callable[[Any, Rollout, torch.Generator], None]] = None
           ) -> Rollout:
    """G trajectories for each of the epoch's P prompts, in minibatches of --batch-size (the same batches the first
    update recomputes), scored and given group advantages; for nft / awm the forward-process inputs and the sampling
    policy's values there (`prepare`: stages/rl_matching.py's, for nft and awm)."""
    cfg = r.cfg
    prompts = [p for p in epoch_prompts(r, epoch) for _ in range(cfg.group_size)]
    encoded = r.family.encode_prompts(r.text, epoch_prompts(r, epoch))
    cond = {k: v.repeat_interleave(cfg.group_size, dim=0) for k, v in encoded.items()}
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    # the layout Family.predict takes (FLUX packs inside predict)
    shape = (len(prompts), *r.family.latent_shape(r.vae.config, r.resolution))
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(r.device)
    if r.kind == "unet":
        x = x * r.sampler.init_noise_sigma
    noise = torch.randn((cfg.steps, *shape), generator=gen, dtype=torch.float32).to(r.device)
    latents, log_probs = [x], []
    for k in range(cfg.steps):
        step = [policy_step(r, x[i:i + cfg.batch_size], k, rows(r, cond, i), r.stochastic[k],
                            noise=noise[k, i:i + cfg.batch_size]) for i in range(0, len(prompts), cfg.batch_size)]
        x = torch.cat([s.prev_sample for s in step])
        latents.append(x)
        log_probs.append(torch.cat([torch.zeros(len(s.prev_sample), device=x.device) if s.log_prob is None
                                    else s.log_prob for s in step]))
    images = decode_latents(r.pipe, x.to(r.weight_dtype))
    raw = {spec: torch.tensor(scorer.score(images, prompts), dtype=torch.float64)
           for spec, scorer in r.scorers.items()}
    rewards = combine_rewards(raw, r.weights)
    advantages = group_advantages(rewards, prompts, cfg.global_std)
    rollout = Rollout(prompts, cond, torch.stack(latents, 1), torch.stack(log_probs, 1), images, raw, rewards,
                      advantages, choose_train_steps(cfg, len(prompts), gen))
    if prepare is not None:
        prepare(r, rollout, gen)
    return rollout


def predict(r: Any, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """The policy's prediction at latents x, timesteps t (B,), under the run's autocast: the denoiser's output, or
    with --guidance-scale g > 1 the guided u + g (c - u), u at the empty prompt's encoding (`r.negative`, one row),
    c at the prompts', in one pass over the doubled batch (as flow_grpo's train_sd3.py)."""
    g, n = r.cfg.guidance_scale, len(x)
    with r.accelerator.autocast():
        if g == 1:
            return r.family.predict(r.model, x.to(r.weight_dtype), t, cond, r.micro.expand(n, -1))
        both = {k: torch.cat([r.negative[k].expand(n, *v.shape[1:]), v]) for k, v in cond.items()}
        x2 = torch.cat([x, x]).to(r.weight_dtype)
        out = r.family.predict(r.model, x2, torch.cat([t, t]), both, r.micro.expand(2 * n, -1))
    uncond, text = out.float().chunk(2)
    return uncond + g * (text - uncond)


def policy_step(r: Any, x: torch.Tensor, k: int | torch.Tensor, cond: dict[str, torch.Tensor],
                stochastic: bool = True, **kwargs):
    """Denoising step k (an index, or one per row) of the sampler from x with its log-prob: the flow SDE step
    (rl.sde.flow_sde_step) or DDIM with eta = 1 (rl.sde.ddim_step); without `stochastic`, the Euler ODE step or
    DDIM with eta = 0 (log_prob None)."""
    sampler = r.sampler
    k = torch.as_tensor(k).expand(len(x))
    t = sampler.timesteps[k]
    out = predict(r, x, t, cond)
    if r.kind == "flow":
        sigmas = sampler.sigmas
        if not stochastic:
            return flow_ode_step(out, x, sigmas[k], sigmas[k + 1])
        return flow_sde_step(out, x, sigmas[k], sigmas[k + 1], sigmas[1].item(), r.cfg.noise_level, **kwargs)
    clip = sampler.config.clip_sample_range if sampler.config.clip_sample else None
    return ddim_step(out, x, t, sampler.alphas_cumprod, r.cfg.steps, eta=1.0 if stochastic else 0.0,
                     prediction_type=sampler.config.prediction_type, clip_sample=clip, **kwargs)


@torch.no_grad()
def evaluate(r: Any) -> dict[str, float]:
    """--eval-steps pass: one image for each of the first --eval-prompts prompts, from fixed noise (a generator
    seeded by --seed alone, so every evaluation starts from the same noise), sampled with the ODE (Euler / DDIM
    eta 0) over `r.eval_sampler`'s --eval-steps steps with the current (not EMA) weights and --guidance-scale,
    scored: `eval/reward` = sum of weight x mean score, and each reward's mean as `eval/reward/SPEC`."""
    cfg, sampler = r.cfg, r.eval_sampler
    prompts = [r.prompts[i % len(r.prompts)] for i in range(cfg.eval_prompts)]
    cond = r.family.encode_prompts(r.text, prompts)
    shape = (len(prompts), *r.family.latent_shape(r.vae.config, r.resolution))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float32).to(r.device)
    if r.kind == "unet":
        x = x * sampler.init_noise_sigma
    clip = sampler.config.get("clip_sample_range") if sampler.config.get("clip_sample") else None
    for k in range(cfg.eval_steps):
        t = sampler.timesteps[k].expand(len(x))
        out = predict(r, x, t, cond)
        if r.kind == "flow":
            x = flow_ode_step(out, x, sampler.sigmas[k], sampler.sigmas[k + 1]).prev_sample
        else:
            x = ddim_step(out, x, t, sampler.alphas_cumprod, cfg.eval_steps, eta=0.0,
                          prediction_type=sampler.config.prediction_type, clip_sample=clip).prev_sample
    images = decode_latents(r.pipe, x.to(r.weight_dtype))
    means = {spec: sum(scorer.score(images, prompts)) / len(images) for spec, scorer in r.scorers.items()}
    return {"eval/reward": sum(r.weights[spec] * m for spec, m in means.items()),
            **{f"eval/reward/{spec}": m for spec, m in means.items()}}
