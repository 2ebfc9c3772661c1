"""`aif rl`'s sampling: one epoch's `Rollout` (G trajectories for each of P prompts from the current policy, scored,
with group advantages) and the policy's denoising step with its log-prob, shared by sampling and the update
(stages/rl_update.py), so the first update recomputes exactly what sampling stored. `r` is the stage's `RLRecipe`
(stages/rl.py; typed Any: importing it here would be an import cycle).

Several processes (`accelerate launch`): the epoch's P prompts are split into W consecutive shares of P / W whole
groups (`process_share`); each process samples its share, every random draw of a group (its initial noise, SDE
noise, trained steps, forward-process noise) comes from a generator seeded by (seed, epoch, the prompt's index in
the epoch), each prompt is encoded alone and the images are decoded per minibatch, so the images do not depend on W
(exactly, when --batch-size divides G: no minibatch then mixes groups). The rewards (and images) of every process
are gathered, in the epoch's order, before the rewards are combined and the advantages computed: per-prompt
statistics, the reward z-scores and --global-std see the whole epoch. Each process keeps its own trajectories
(latents, log-probs) and trains on their advantages; DDP averages the gradients.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from accelerate.utils import gather_object

from aifeedback.errors import AifError
from aifeedback.families.sampling import decode_latents
from aifeedback.rl.advantages import combine_rewards, group_advantages
from aifeedback.rl.sde import ddim_step, flow_ode_step, flow_sde_step


@dataclass
class Rollout:
    """One epoch's samples: per trajectory its prompt, the latents before and after each denoising step, the
    step's log-prob, the steps the update trains, and its reward and advantage. prompts, images, raw, rewards and
    advantages hold every process's N trajectories (gathered, in the epoch's order); the other tensors hold this
    process's n of them, trajectories offset..offset + n of the epoch (all of them with one process)."""

    prompts: list[str]
    conditioning: dict[str, torch.Tensor]  # the prompts' encodings, one row per trajectory (this process's)
    latents: torch.Tensor  # (n, steps + 1, C, h, w) float32: x_0 = noise, x_k after step k
    log_probs: torch.Tensor  # (n, steps) float32; 0 for a deterministic step (ODE sampling)
    images: list  # the decoded final images (PIL), every process's
    raw: dict[str, torch.Tensor]  # each reward's scores, (N,)
    rewards: torch.Tensor  # (N,) combined reward
    advantages: torch.Tensor  # (N,)
    train_steps: torch.Tensor  # (n, k) long: the sampling steps the update trains, per trajectory, in order
    train_noise: Optional[torch.Tensor] = None  # nft, awm: (n, k, C, h, w) the forward process's noise
    old: Optional[torch.Tensor] = None  # nft: v_old (n, k, C, h, w); awm: the matching log-prob (n, k)
    offset: int = 0  # this process's first trajectory in the epoch
    monitor: dict[str, list[float]] = field(default_factory=dict)  # each held-out reward's scores (--monitor)

    @property
    def own_advantages(self) -> torch.Tensor:
        """The advantages of this process's trajectories, (n,)."""
        return self.advantages[self.offset:self.offset + len(self.latents)]


def epoch_prompts(r: Any, epoch: int) -> list[str]:
    p, n = r.cfg.prompts_per_epoch, len(r.prompts)
    return [r.prompts[(epoch * p + i) % n] for i in range(p)]


def process_share(prompts_per_epoch: int, rank: int, processes: int) -> range:
    """The epoch's prompt indices (whole groups) that process `rank` of `processes` samples: the rank-th of
    `processes` consecutive equal shares."""
    if prompts_per_epoch % processes:  # RLRecipe.setup refuses it first (RLConfig.launch_problems)
        raise AifError(f"--prompts-per-epoch {prompts_per_epoch} is not a multiple of the {processes} processes")
    share = prompts_per_epoch // processes
    return range(rank * share, (rank + 1) * share)


def check_resume_processes(checkpoint: Any, state: dict[str, Any], processes: int) -> None:
    """A checkpoint resumes with the number of processes that wrote it (its optimizer steps and RNGs depend on it)."""
    if state.get("processes", processes) != processes:
        raise AifError(f"{checkpoint} was written by a run with {state['processes']} processes; resume it with the "
                       f"same number (this one has {processes}), or start a new run with another --out")


def group_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of every random draw of the epoch's index-th prompt's group: seeded by (seed, epoch, index),
    not by the process, so a group's images are the same whichever process samples it."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + index) % 2 ** 63)


def rows(r: Any, cond: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Rows i..i+batch_size of every conditioning tensor."""
    return {k: v[i:i + r.cfg.batch_size] for k, v in cond.items()}


def choose_train_steps(cfg: Any, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, train_steps) step indices per trajectory, out of `cfg.trainable_steps`, k = int(count * timestep_fraction)
    of them. grpo: the first k, in order, for every trajectory (flow_grpo scripts/train_sd3.py since 2d76907,
    2025-07-15: `range(num_train_timesteps)`; at 10 steps and 0.99 the last, nearly noiseless step is not trained).
    nft, awm: the first k of a random permutation per trajectory (DiffusionNFT scripts/train_nft_sd3.py), drawn from
    the epoch's generator after the sampling noise, so a resumed epoch chooses the same steps and the trajectories
    do not depend on the fraction. All of them, in order, when k is every one."""
    steps = torch.tensor(cfg.trainable_steps, dtype=torch.long)
    if cfg.train_steps == len(steps) or cfg.algorithm == "grpo":
        return steps[:cfg.train_steps].expand(n, -1).clone()
    return torch.stack([steps[torch.randperm(len(steps), generator=gen)[:cfg.train_steps]] for _ in range(n)])


@torch.no_grad()
def sample(r: Any, epoch: int, prepare: Optional[Callable[[Any, Rollout, list[torch.Generator]], None]] = None
           ) -> Rollout:
    """G trajectories for each of this process's share of the epoch's P prompts, in minibatches of --batch-size
    (the same batches the first update recomputes), scored, the rewards gathered from every process and given
    group advantages; for nft / awm the forward-process inputs and the sampling policy's values there (`prepare`:
    stages/rl_matching.py's, for nft and awm)."""
    cfg, acc = r.cfg, r.accelerator
    epoch_list = epoch_prompts(r, epoch)
    everyone = [p for p in epoch_list for _ in range(cfg.group_size)]
    share = process_share(cfg.prompts_per_epoch, acc.process_index, acc.num_processes)
    mine = [epoch_list[i] for i in share]
    prompts = [p for p in mine for _ in range(cfg.group_size)]
    cond = {k: v.repeat_interleave(cfg.group_size, dim=0) for k, v in encode_alone(r, mine).items()}
    gens = [group_generator(cfg.seed, epoch, i) for i in share]
    # the layout Family.predict takes (FLUX packs inside predict)
    group = (cfg.group_size, *r.family.latent_shape(r.vae.config, r.resolution))
    x = torch.cat([torch.randn(group, generator=g, dtype=torch.float32) for g in gens]).to(r.device)
    if r.kind == "unet":
        x = x * r.sampler.init_noise_sigma
    noise = torch.cat([torch.randn((cfg.steps, *group), generator=g, dtype=torch.float32) for g in gens],
                      dim=1).to(r.device)
    latents, log_probs = [x], []
    for k in range(cfg.steps):
        step = [policy_step(r, x[i:i + cfg.batch_size], k, rows(r, cond, i), r.stochastic[k],
                            noise=noise[k, i:i + cfg.batch_size]) for i in range(0, len(prompts), cfg.batch_size)]
        x = torch.cat([s.prev_sample for s in step])
        latents.append(x)
        log_probs.append(torch.cat([torch.zeros(len(s.prev_sample), device=x.device) if s.log_prob is None
                                    else s.log_prob for s in step]))
    # decoded per minibatch (as sampled): the images do not depend on the other groups either
    images = [im for i in range(0, len(x), cfg.batch_size)
              for im in decode_latents(r.pipe, x[i:i + cfg.batch_size].to(r.weight_dtype))]
    raw = {spec: gather(r, torch.tensor(scorer.score(images, prompts), dtype=torch.float64))
           for spec, scorer in r.scorers.items()}
    images = gather_object(images) if acc.num_processes > 1 else images
    rewards = combine_rewards(raw, r.weights)  # every process's: the normalisation sees the whole epoch
    advantages = group_advantages(rewards, everyone, cfg.global_std)
    train_steps = torch.cat([choose_train_steps(cfg, cfg.group_size, g) for g in gens])
    rollout = Rollout(everyone, cond, torch.stack(latents, 1), torch.stack(log_probs, 1), images, raw, rewards,
                      advantages, train_steps, offset=share.start * cfg.group_size)
    if prepare is not None:
        prepare(r, rollout, gens)
    return rollout


def encode_alone(r: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The prompts' encodings, each prompt encoded alone (a group's numbers then do not depend on which other
    prompts share its process: CPU kernels round differently at other batch sizes); encoded together where the
    family's encodings vary in length (no padding to a fixed length)."""
    alone = [r.family.encode_prompts(r.text, [p]) for p in prompts]
    if any(e[k].shape != alone[0][k].shape for e in alone for k in e):
        return r.family.encode_prompts(r.text, prompts)
    return {k: torch.cat([e[k] for e in alone]) for k in alone[0]}


def gather(r: Any, values: torch.Tensor) -> torch.Tensor:
    """Every process's `values` (the same length on each), concatenated in process order (the epoch's order)."""
    if r.accelerator.num_processes == 1:
        return values
    return r.accelerator.gather(values.to(r.device)).cpu()


def adapter_layers(model: Any) -> list[Any]:
    """The network's LoRA layers (peft's BaseTunerLayer modules), the ones diffusers' disable_adapters and
    enable_adapters switch, listed once at setup: `reference` switches them around each reference forward without
    walking every module of the network twice per trained step."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def reference(r: Any) -> Iterator[Any]:
    """The reference model (the base) for the KL terms, for the block: with LoRA the prepared network with its
    adapters (`r.adapters`, `adapter_layers` of the unwrapped network) disabled, as diffusers' disable_adapters
    does (through the wrapper: under FSDP its forward is a collective), in a full fine-tune the frozen copy
    (`r.ref`, train_setup.denoisers with needs_ref)."""
    if r.ref is not None:
        yield r.ref
        return
    for layer in r.adapters:
        layer.enable_adapters(False)
    try:
        yield r.model
    finally:
        for layer in r.adapters:
            layer.enable_adapters(True)


def predict(r: Any, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor], model: Any = None
            ) -> torch.Tensor:
    """The policy's (or `model`'s) prediction at latents x, timesteps t (B,), under the run's autocast: the
    denoiser's output, or with --guidance-scale g > 1 the guided u + g (c - u), u at the empty prompt's encoding
    (`r.negative`, one row), c at the prompts', in one pass over the doubled batch (as flow_grpo's train_sd3.py)."""
    g, n, model = r.cfg.guidance_scale, len(x), r.model if model is None else model
    with r.accelerator.autocast():
        if g == 1:
            return r.family.predict(model, x.to(r.weight_dtype), t, cond, r.micro.expand(n, -1))
        both = {k: torch.cat([r.negative[k].expand(n, *v.shape[1:]), v]) for k, v in cond.items()}
        x2 = torch.cat([x, x]).to(r.weight_dtype)
        out = r.family.predict(model, x2, torch.cat([t, t]), both, r.micro.expand(2 * n, -1))
    uncond, text = out.float().chunk(2)
    return uncond + g * (text - uncond)


def policy_step(r: Any, x: torch.Tensor, k: int | torch.Tensor, cond: dict[str, torch.Tensor],
                stochastic: bool = True, model: Any = None, sampler: Any = None, **kwargs):
    """Denoising step k (an index, or one per row) of `sampler` (default: the training one, `r.sampler`) from x with
    its log-prob: the flow SDE step (rl.sde.flow_sde_step) or DDIM with eta = 1 (rl.sde.ddim_step); without
    `stochastic`, the Euler ODE step or DDIM with eta = 0 (log_prob None)."""
    sampler = r.sampler if sampler is None else sampler
    k = torch.as_tensor(k).expand(len(x))
    t = sampler.timesteps[k]
    out = predict(r, x, t, cond, model)
    if r.kind == "flow":
        sigmas = sampler.sigmas
        if not stochastic:
            return flow_ode_step(out, x, sigmas[k], sigmas[k + 1])
        return flow_sde_step(out, x, sigmas[k], sigmas[k + 1], sigmas[1].item(), r.cfg.noise_level, **kwargs)
    clip = sampler.config.clip_sample_range if sampler.config.clip_sample else None
    return ddim_step(out, x, t, sampler.alphas_cumprod, len(sampler.timesteps), eta=1.0 if stochastic else 0.0,
                     prediction_type=sampler.config.prediction_type, clip_sample=clip, **kwargs)


def evaluate(r: Any) -> dict[str, float]:
    """--eval-steps pass: one image for each of the first --eval-prompts prompts, from fixed noise (a generator
    seeded by --seed alone, so every evaluation starts from the same noise), sampled with the ODE (Euler / DDIM
    eta 0) over `r.eval_sampler`'s --eval-steps steps with the current (not EMA) weights and --guidance-scale,
    scored: `eval/reward` = sum of weight x mean score, and each reward's mean as `eval/reward/SPEC`.

    Several processes share the pass (`evaluation_share`) and gather the scores, so each evaluates its part and all
    log the same means, those of one process. A sharded model (FSDP) needs every process in each forward, so there
    every process runs the whole pass."""
    acc = r.accelerator
    rank, processes = (0, 1) if r.sharded else (acc.process_index, acc.num_processes)
    scored = evaluation_share(r, rank, processes)
    if processes > 1:
        scored = sorted(gather_object(scored), key=lambda item: item[0])
    means = {spec: sum(scores[spec] for _, scores in scored) / len(scored) for spec in r.scorers}
    return {"eval/reward": sum(r.weights[spec] * m for spec, m in means.items()),
            **{f"eval/reward/{spec}": m for spec, m in means.items()}}


@torch.no_grad()
def evaluation_share(r: Any, rank: int, processes: int) -> list[tuple[int, dict[str, float]]]:
    """Process `rank`'s part of the --eval-steps pass: the evaluation prompts in batches of --batch-size, batch b
    sampled by process b mod `processes`, each row from its own rows of the whole pass's noise, so an image does not
    depend on the number of processes; (prompt index, {reward: score}) per image. The denoiser is called unwrapped
    (no DDP collective: the processes run different numbers of batches)."""
    cfg, sampler, size = r.cfg, r.eval_sampler, r.cfg.batch_size
    prompts = [r.prompts[i % len(r.prompts)] for i in range(cfg.eval_prompts)]
    shape = (len(prompts), *r.family.latent_shape(r.vae.config, r.resolution))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float32)
    model = r.model if r.sharded else r.accelerator.unwrap_model(r.model)
    scored = []
    for first in range(rank * size, len(prompts), processes * size):
        batch = prompts[first:first + size]
        cond = r.family.encode_prompts(r.text, batch)
        x = noise[first:first + len(batch)].to(r.device)
        if r.kind == "unet":
            x = x * sampler.init_noise_sigma
        for k in range(cfg.eval_steps):
            x = policy_step(r, x, k, cond, stochastic=False, model=model, sampler=sampler).prev_sample
        images = decode_latents(r.pipe, x.to(r.weight_dtype))
        scores = {spec: scorer.score(images, batch) for spec, scorer in r.scorers.items()}
        scored += [(first + j, {spec: s[j] for spec, s in scores.items()}) for j in range(len(batch))]
    return scored
