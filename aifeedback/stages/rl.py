"""`aif rl`: online RL of a text-to-image denoiser on any reward (issue 22; REFERENCE.md section 10).

`RLRecipe` builds its parts with the trainer's shared pieces (stages/train_setup.py, train_guard.py,
train_checkpoint.py) and runs epochs. Each epoch: P prompts (the prompt list in order, cycling), G images each,
sampled from the current policy with the per-step log-probs of the stochastic sampler (flow families: `rl.sde`'s
SDE step over the pipeline scheduler's sigmas, Flow-GRPO; UNet families: DDIM with eta = 1 over the DDIM
scheduler's timesteps, DDPO); the images scored by the rewards (`--reward`, combined by
`rl.advantages.combine_rewards`), per-prompt group advantages; then `--inner-epochs` passes of updates, each
optimizer step over `--batch-size` trajectories accumulating the loss of every denoising step (as Flow-GRPO). The
first update of an epoch recomputes the stored log-probs with the same weights, batch and inputs: its ratio is
exactly 1 (`ratio_dev_first` = 0 in metrics.jsonl), the check that sampling and training see the same policy.

So far: algorithm grpo, flow families (SD3, FLUX layout through `Family.predict`) and the text-to-image UNet families
(SD1.5, SDXL: size and crop time ids of an uncropped image at the resolution), LoRA, no classifier-free guidance,
one process. Run folder: config.yaml, manifest.json, metrics.jsonl (one line per epoch), rollouts/ (each epoch's
prompts, images, rewards and advantages as Parquet: `write_rollout`), checkpoints/
checkpoint-NNNNNN (NNNNNN = the epoch; the same files as `aif train`'s, so `aif export` reads them). A rerun of the
same command continues from the latest checkpoint: epoch e samples from a generator seeded by (seed, e), and the
weights, optimizer and RNGs are restored exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from aifeedback.config import identity_dict, save_config, to_dict
from aifeedback.console import finish, note, progress, quiet_libraries
from aifeedback.data.prompts import load_prompts, prompt_id
from aifeedback.errors import AifError
from aifeedback.families import detect
from aifeedback.families.base import time_ids
from aifeedback.families.flow import FlowFamily
from aifeedback.families.loading import load_pipeline
from aifeedback.families.quantize import quantized_base_dtype
from aifeedback.families.resolve import model_defaults
from aifeedback.families.sampling import decode_latents, encode_image
from aifeedback.rl import ALGORITHMS
from aifeedback.rl.advantages import all_equal_share, combine_rewards, group_advantages
from aifeedback.rl.sde import ddim_step, flow_sde_step
from aifeedback.scoring.scorers import load_scorer
from aifeedback.stages.rl_config import RLConfig, reward_weights
from aifeedback.stages.train_checkpoint import load_train_state, load_weights, write_checkpoint
from aifeedback.stages.train_ema import STATE_KEY as EMA_STEPS
from aifeedback.stages.train_guard import check_finite_weights, finite_update
from aifeedback.stages.train_resume import truncate_metrics
from aifeedback.stages.train_setup import (
    WEIGHT_DTYPES,
    denoisers,
    frozen_parts,
    init_trackers,
    make_accelerator,
    make_ema,
    make_optimizer,
)
from aifeedback.storage import checkpoints as ck
from aifeedback.storage.files import read_json
from aifeedback.storage.manifest import finish_output, prepare_output
from aifeedback.storage.shards import write_shard

ROLLOUTS = "rollouts"  # OUT/rollouts/data/train-NNNNN.parquet: epoch NNNNN's samples


def run(cfg: RLConfig) -> Path:
    """Run the epochs; returns the run folder."""
    cfg.preflight()
    quiet_libraries()
    recipe = RLRecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return recipe.out


@dataclass
class Rollout:
    """One epoch's samples: per trajectory its prompt, the latents before and after each denoising step, the
    step's log-prob, and its reward and advantage."""

    prompts: list[str]
    conditioning: dict[str, torch.Tensor]  # the prompts' encodings, one row per trajectory
    latents: torch.Tensor  # (N, steps + 1, C, h, w) float32: x_0 = noise, x_k after step k
    log_probs: torch.Tensor  # (N, steps) float32
    images: list  # the decoded final images (PIL)
    raw: dict[str, torch.Tensor]  # each reward's scores, (N,)
    rewards: torch.Tensor  # (N,) combined reward
    advantages: torch.Tensor  # (N,)


class RLRecipe:
    """Online RL (grpo) of one denoiser with LoRA, one process: setup() then train()."""

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.weights = reward_weights(cfg.reward)
        self.loss_fn = ALGORITHMS[cfg.algorithm].function()

    def setup(self) -> None:
        cfg = self.cfg
        self.accelerator = acc = make_accelerator(cfg, self.out)
        if acc.num_processes > 1:
            raise AifError("aif rl runs in one process so far (issue 22); run it without accelerate launch")
        self.main, self.device = acc.is_main_process, acc.device
        self.resume_from = self._setup_run_folder()
        set_seed(cfg.seed, device_specific=True)
        dtype = quantized_base_dtype(cfg.base_quantization, acc.mixed_precision, self.device.type, "float32")
        self.pipe = load_pipeline(cfg.model, dtype, "cpu", quantization=cfg.base_quantization)
        self.family = detect(self.pipe)
        self.kind = "flow" if isinstance(self.family, FlowFamily) else "unet"
        ALGORITHMS[cfg.algorithm].check_kind(self.kind, self.family.name)
        if self.family.name == "sdxl-refiner":
            raise AifError(f"--model {cfg.model}: the SDXL refiner is an image-to-image model and aif rl samples "
                           "from noise; use the SDXL base model")
        self.resolution = cfg.resolution or model_defaults(cfg.model).resolution or self.family.resolution
        self.weight_dtype = WEIGHT_DTYPES[acc.mixed_precision]
        self.text, self.vae = frozen_parts(self.pipe, self.family, self.device, self.weight_dtype, False)
        self.model, _ = denoisers(self.pipe, self.family, cfg, self.device, self.weight_dtype, needs_ref=False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, self.lr_sched = make_optimizer(cfg, self.params, cfg.lr)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        self.ema = make_ema(self.params, cfg.ema_decay, sharded=False)
        self.scorers = {spec: load_scorer(spec, str(self.device)) for spec in self.weights}
        self.prompts = [p.text for p in load_prompts(cfg.prompts, cfg.prompt_column)]
        self.sampler = self._setup_sampler()
        self.state = self._setup_resume()
        init_trackers(acc, cfg, "aif-rl")

    def _setup_sampler(self) -> Any:
        """The sampling schedule: the flow-matching Euler scheduler's sigmas, or DDIM's timesteps (UNet)."""
        config = self.pipe.scheduler.config
        if self.kind == "flow":
            sampler = FlowMatchEulerDiscreteScheduler.from_config(config)
        else:
            sampler = DDIMScheduler.from_config(config)
            if sampler.config.thresholding:
                raise AifError(f"--model {self.cfg.model}: its scheduler uses dynamic thresholding, which DDPO's "
                               "DDIM step does not model; use a model without it")
        patches = (self.resolution // (2 * self.pipe.vae_scale_factor)) ** 2  # the pipelines' image_seq_len
        shift = self.family.sampling_schedule(config, patches, self.cfg.steps) if self.kind == "flow" else {}
        sampler.set_timesteps(self.cfg.steps, device=self.device, **shift)
        r = self.resolution
        self.micro = torch.tensor([time_ids((r, r), (0, 0), (r, r))], dtype=torch.float32, device=self.device)
        return sampler

    def _setup_run_folder(self) -> Optional[Path]:
        """Prepare --out (a different job there is refused unless --overwrite); the checkpoint to continue from."""
        cfg, out = self.cfg, self.out
        if self.main:
            if cfg.overwrite:
                for name in ("checkpoints", "logs", ROLLOUTS, "metrics.jsonl", "manifest.json", "config.yaml"):
                    p = out / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            prepare_output(out, "rl", to_dict(cfg), identity_dict(cfg), overwrite=cfg.overwrite)
            save_config(cfg, out / "config.yaml")
        self.accelerator.wait_for_everyone()
        existing = ck.list_checkpoints(out)
        return existing[-1] if existing else None

    def _setup_resume(self) -> dict[str, Any]:
        state = {"epoch": 0, "step": 0}
        if self.resume_from is not None:
            state = ck.read_state(self.resume_from)
            acc = self.accelerator
            load_train_state(acc, self.resume_from, False, self.optimizer, self.lr_sched, 0,
                             lambda: load_weights(acc.unwrap_model(self.model), self.resume_from, True, self.family))
            if self.ema is not None:
                folder = self.resume_from / ck.EMA_DIR
                self.ema.load(lambda: load_weights(acc.unwrap_model(self.model), folder, True, self.family),
                              state[EMA_STEPS])
            self._say(f"resuming from {self.resume_from} (epoch {state['epoch']})")
        if self.main:
            truncate_metrics(self.out / "metrics.jsonl", state["step"])
        return state

    def _say(self, msg: str) -> None:
        if self.main:
            note(msg)

    # ---- the epochs -------------------------------------------------------------------------------------------

    def train(self) -> None:
        cfg = self.cfg
        self._say(f"rl {cfg.algorithm} on {self.family.name} LoRA r={cfg.lora_rank}: {cfg.prompts_per_epoch} prompts "
                  f"x {cfg.group_size} images per epoch, {cfg.steps} steps, reward {cfg.reward}")
        bar = progress(total=cfg.epochs, initial=self.state["epoch"], desc="rl", unit="epoch",
                       enabled=cfg.progress and self.main)
        while self.state["epoch"] < cfg.epochs:
            t0 = time.perf_counter()
            rollout = self.sample(self.state["epoch"])
            if self.main:
                write_rollout(self.out, self.state["epoch"], rollout)
            t1 = time.perf_counter()
            sums = self.update(rollout)
            self.state["epoch"] += 1
            self._log(rollout, sums, t1 - t0, time.perf_counter() - t1)
            bar.update(1)
            if self.state["epoch"] % cfg.checkpoint_every == 0 or self.state["epoch"] == cfg.epochs:
                self.save_checkpoint()
        bar.close()
        if self.main:
            finish_output(self.out, read_json(self.out / "manifest.json"), epochs=self.state["epoch"],
                          steps=self.state["step"])
            finish("rl", self.out, f"{self.state['epoch']} {cfg.algorithm} epochs, checkpoints in "
                   f"{self.out / 'checkpoints'}", f"aif sample --model {cfg.model} --tuned {self.out}")

    def _epoch_prompts(self, epoch: int) -> list[str]:
        p, n = self.cfg.prompts_per_epoch, len(self.prompts)
        return [self.prompts[(epoch * p + i) % n] for i in range(p)]

    @torch.no_grad()
    def sample(self, epoch: int) -> Rollout:
        """G trajectories for each of the epoch's P prompts, in minibatches of --batch-size (the same batches the
        first update recomputes), scored and given group advantages."""
        cfg = self.cfg
        prompts = [p for p in self._epoch_prompts(epoch) for _ in range(cfg.group_size)]
        encoded = self.family.encode_prompts(self.text, self._epoch_prompts(epoch))
        cond = {k: v.repeat_interleave(cfg.group_size, dim=0) for k, v in encoded.items()}
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        # the layout Family.predict takes (FLUX packs inside predict)
        shape = (len(prompts), *self.family.latent_shape(self.vae.config, self.resolution))
        x = torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)
        if self.kind == "unet":
            x = x * self.sampler.init_noise_sigma
        noise = torch.randn((cfg.steps, *shape), generator=gen, dtype=torch.float32).to(self.device)
        latents, log_probs = [x], []
        for k in range(cfg.steps):
            step = [self._policy_step(x[i:i + cfg.batch_size], k, self._rows(cond, i),
                                      noise=noise[k, i:i + cfg.batch_size])
                    for i in range(0, len(prompts), cfg.batch_size)]
            x = torch.cat([s.prev_sample for s in step])
            latents.append(x)
            log_probs.append(torch.cat([s.log_prob for s in step]))
        images = decode_latents(self.pipe, x.to(self.weight_dtype))
        raw = {spec: torch.tensor(scorer.score(images, prompts), dtype=torch.float64)
               for spec, scorer in self.scorers.items()}
        rewards = combine_rewards(raw, self.weights)
        advantages = group_advantages(rewards, prompts, cfg.global_std)
        return Rollout(prompts, cond, torch.stack(latents, 1), torch.stack(log_probs, 1), images, raw, rewards,
                       advantages)

    def _rows(self, cond: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        return {k: v[i:i + self.cfg.batch_size] for k, v in cond.items()}

    def _policy_step(self, x: torch.Tensor, k: int, cond: dict[str, torch.Tensor], **kwargs):
        """Denoising step k of the sampler from x with its log-prob: the flow SDE step (rl.sde.flow_sde_step) or
        DDIM with eta = 1 (rl.sde.ddim_step)."""
        sampler = self.sampler
        t = sampler.timesteps[k].expand(len(x))
        with self.accelerator.autocast():
            out = self.family.predict(self.model, x.to(self.weight_dtype), t, cond, self.micro.expand(len(x), -1))
        if self.kind == "flow":
            sigmas = sampler.sigmas
            return flow_sde_step(out, x, sigmas[k], sigmas[k + 1], sigmas[1].item(), self.cfg.noise_level, **kwargs)
        clip = sampler.config.clip_sample_range if sampler.config.clip_sample else None
        return ddim_step(out, x, t, sampler.alphas_cumprod, self.cfg.steps, eta=1.0,
                         prediction_type=sampler.config.prediction_type, clip_sample=clip, **kwargs)

    @torch.no_grad()
    def _reference_step(self, x: torch.Tensor, k: int, cond: dict[str, torch.Tensor], x_next: torch.Tensor):
        """The reference's step (the base model: the network with its LoRA adapters disabled) to the stored x_next,
        for the KL term."""
        base = self.accelerator.unwrap_model(self.model)
        base.disable_adapters()
        try:
            return self._policy_step(x, k, cond, prev_sample=x_next)
        finally:
            base.enable_adapters()

    def update(self, rollout: Rollout) -> dict[str, float]:
        """--inner-epochs passes of optimizer steps over the rollout; returns the mean metrics and the first
        update's ratio deviation."""
        cfg = self.cfg
        sums: dict[str, float] = {}
        first: Optional[float] = None
        n, count = len(rollout.prompts), 0
        for _ in range(cfg.inner_epochs):
            for i in range(0, n, cfg.batch_size):
                metrics, norm = self._optimizer_step(rollout, i)
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

    def _optimizer_step(self, rollout: Rollout, i: int) -> tuple[dict[str, float], Optional[torch.Tensor]]:
        """One optimizer step over trajectories i..i+batch_size: the loss of every denoising step, accumulated."""
        cfg, acc = self.cfg, self.accelerator
        sl = slice(i, i + cfg.batch_size)
        cond, adv = self._rows(rollout.conditioning, i), rollout.advantages[sl].to(self.device)
        metrics: dict[str, float] = {}
        finite, ratio_dev = True, 0.0
        for k in range(cfg.steps):
            x, x_next = rollout.latents[sl, k], rollout.latents[sl, k + 1]
            step = self._policy_step(x, k, cond, prev_sample=x_next)
            kl = {}
            if cfg.kl_beta > 0:
                kl = dict(beta=cfg.kl_beta, prev_sample_mean=step.prev_sample_mean, std_dev_t=step.std_dev_t,
                          prev_sample_mean_ref=self._reference_step(x, k, cond, x_next).prev_sample_mean)
            loss, m = self.loss_fn(step.log_prob, rollout.log_probs[sl, k], adv, clip_range=cfg.clip_range,
                                   adv_clip_max=cfg.adv_clip_max, **kl)
            finite &= bool(torch.isfinite(loss.detach()))
            acc.backward(loss / cfg.steps)
            ratio_dev = max(ratio_dev, m["ratio_dev"].item())
            for key, value in m.items():
                metrics[key] = metrics.get(key, 0.0) + value.item() / cfg.steps
        metrics["ratio_dev"] = ratio_dev
        norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm or math.inf)
        if finite_update(acc, norm, finite, self.state, self.state["step"] + 1, cfg.skip_nonfinite, self.out,
                         self._say):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_sched.step()
        if self.ema is not None:
            self.ema.step()
        self.state["step"] += 1
        return metrics, norm

    def _log(self, rollout: Rollout, sums: dict[str, float], t_sample: float, t_update: float) -> None:
        record = {"epoch": self.state["epoch"], "step": self.state["step"],
                  "reward_mean": rollout.rewards.mean().item(),
                  "reward_std": rollout.rewards.std(unbiased=False).item(),
                  **{f"reward/{k}": v.mean().item() for k, v in rollout.raw.items()},
                  "all_equal_share": all_equal_share(rollout.rewards, rollout.prompts),
                  **{k: round(v, 10) for k, v in sums.items()}, "lr": self.lr_sched.get_last_lr()[0],
                  "images_per_s": round(len(rollout.prompts) / t_sample, 3),
                  "updates_per_s": round(self.cfg.updates_per_epoch / t_update, 3)}
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.cfg.trackers != "none":
            self.accelerator.log({f"rl/{k}": v for k, v in record.items() if isinstance(v, (int, float))},
                                 step=self.state["epoch"])

    def save_checkpoint(self) -> None:
        acc, epoch = self.accelerator, self.state["epoch"]
        check_finite_weights(acc, self.params, self.out, self.state["step"])
        final = self.out / "checkpoints" / ck.checkpoint_name(epoch)
        state = dict(self.state, processes=acc.num_processes)
        if write_checkpoint(acc, final, self.model, lora=True, family=self.family, sharded=False,
                            optimizer=self.optimizer, lr_sched=self.lr_sched, ema=self.ema, state=state):
            ck.prune(self.out, self.cfg.keep_checkpoints)
            self._say(f"epoch {epoch}: wrote checkpoint {final}")
        acc.wait_for_everyone()

    def cleanup(self) -> None:
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.wait_for_everyone()


def write_rollout(out: Path, epoch: int, rollout: Rollout) -> Path:
    """Epoch `epoch`'s samples as Parquet shard OUT/rollouts/data/train-NNNNN.parquet (NNNNN = the epoch): one row
    per image with generate's columns (prompt_id, prompt, k, image as PNG bytes, width, height), the epoch, the
    combined reward, the advantage and each reward's score (`reward_SPEC`); `datasets` reads the folder."""
    g = rollout.prompts.count(rollout.prompts[0]) if rollout.prompts else 1
    rows = []
    for i, (text, image) in enumerate(zip(rollout.prompts, rollout.images, strict=True)):
        rows.append({"epoch": epoch, "prompt_id": prompt_id(text), "prompt": text, "k": i % g,
                     "image": encode_image(image, "png"), "width": image.width, "height": image.height,
                     "reward": float(rollout.rewards[i]), "advantage": float(rollout.advantages[i]),
                     **{f"reward_{spec}": float(r[i]) for spec, r in rollout.raw.items()}})
    return write_shard(out / ROLLOUTS, epoch, rows)
