"""`aif rl`: online RL of a text-to-image denoiser on any reward (issue 22; REFERENCE.md section 10).

`RLRecipe` builds its parts with the trainer's shared pieces (stages/train_setup.py, train_guard.py,
train_checkpoint.py) and runs epochs. Each epoch (stages/rl_rollout.py): P prompts (the prompt list in order,
cycling), G images each, sampled from the current policy: stochastically with per-step log-probs (`--sampler sde`,
grpo's: flow families `rl.sde`'s SDE step over the pipeline scheduler's sigmas, Flow-GRPO; UNet families DDIM with
eta = 1 over the DDIM scheduler's timesteps, DDPO) or with the ODE (`--sampler ode`, nft's and awm's: the Euler step /
DDIM eta 0); the images scored by the rewards (`--reward`, combined by `rl.advantages.combine_rewards`), per-prompt
group advantages; then `--inner-epochs` passes of updates (stages/rl_update.py), each optimizer step over
`--batch-size` trajectories accumulating the loss of every trained step (`--timestep-fraction` of the sampling
steps): grpo on the stored denoising steps, nft and awm on the forward process of the final latents
(stages/rl_matching.py). The first update of an epoch recomputes what sampling stored with the same weights, batch
and inputs: grpo's and awm's ratio is exactly 1 (`ratio_dev_first` = 0 in metrics.jsonl), nft's v equals v_old
(`v_dev_first` = 0), the check that sampling and training see the same policy.

So far: flow families (SD3, FLUX layout through `Family.predict`) and the text-to-image UNet families (SD1.5, SDXL:
size and crop time ids of an uncropped image at the resolution), LoRA or the whole denoiser (`--lora-rank 0`, as aif
train: the KL reference is then a frozen copy), CFG while sampling (`--guidance-scale`), an ODE evaluation pass
(`--eval-steps`), several processes (`accelerate launch`, DDP): each samples its share of whole groups (P divisible
by the number of processes), the rewards of every process are gathered before the advantages (stages/rl_rollout.py),
the main process writes the files from the gathered data. FSDP goes through the trainer's sharded checkpoint code
(no EMA there; tested on 2 CPU processes against DDP: tests/test_rl_fsdp.py); DeepSpeed is refused
(rl_update.check_distribution). Run
folder: config.yaml, manifest.json, metrics.jsonl (one line per epoch), rollouts/ (each epoch's prompts, images,
rewards and advantages as Parquet), pairs/ (each group's best vs worst image, what `aif train --data ai`
reads; both: stages/rl_outputs.py), report.json + report.html (stages/rl_report.py),
checkpoints/checkpoint-NNNNNN (NNNNNN = the epoch; the same files as `aif train`'s, so `aif export` reads them). A
rerun of the same command continues from the latest checkpoint (with the same number of processes): epoch e's group
of prompt i samples (and chooses its trained steps and forward-process noise) from a generator seeded by (seed, e,
i), and the weights, optimizer and RNGs are restored exactly.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from aifeedback.config import ConfigError, identity_dict, save_config, to_dict
from aifeedback.console import finish, note, progress, quiet_libraries
from aifeedback.data.labels import RL_PAIRS_DIR
from aifeedback.data.prompts import load_prompts
from aifeedback.dist import sharded
from aifeedback.errors import AifError
from aifeedback.families import detect
from aifeedback.families.base import time_ids
from aifeedback.families.flow import FlowFamily
from aifeedback.families.loading import load_pipeline
from aifeedback.families.quantize import quantized_base_dtype
from aifeedback.families.resolve import model_defaults
from aifeedback.rl import ALGORITHMS
from aifeedback.rl.advantages import all_equal_share
from aifeedback.scoring.scorers import load_scorer
from aifeedback.stages import rl_matching, rl_rollout, rl_update
from aifeedback.stages.rl_config import RLConfig, monitor_specs, reward_weights
from aifeedback.stages.rl_outputs import ROLLOUTS, epoch_extras, monitor_scores, write_pairs, write_rollout
from aifeedback.stages.rl_report import write_rl_report
from aifeedback.stages.rl_rollout import Rollout
from aifeedback.stages.train_checkpoint import load_train_state, load_weights, write_checkpoint
from aifeedback.stages.train_ema import STATE_KEY as EMA_STEPS
from aifeedback.stages.train_guard import check_finite_weights
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


def run(cfg: RLConfig) -> Path:
    """Run the epochs; returns the run folder."""
    cfg.preflight()
    quiet_libraries()
    recipe = RLRecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return recipe.out


class RLRecipe:
    """Online RL (grpo, nft, awm) of one denoiser, LoRA or full, on one or several processes: setup() then
    train()."""

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.weights = reward_weights(cfg.reward)
        self.lora = cfg.lora_rank > 0
        self.loss_fn = ALGORITHMS[cfg.algorithm].function()

    def setup(self) -> None:
        cfg = self.cfg
        self.accelerator = acc = make_accelerator(cfg, self.out)
        problems = cfg.launch_problems(acc.num_processes)  # P splits into whole groups; the warmup fits
        if problems:
            raise ConfigError(problems, f"aif rl on {acc.num_processes} processes")
        rl_update.check_distribution(acc.distributed_type)
        cfg.processes = acc.num_processes  # the optimizer steps per epoch (the lr schedule's length) depend on it
        self.main, self.device = acc.is_main_process, acc.device
        self.resume_from = self._setup_run_folder()
        if self.resume_from is not None:  # before any model loads
            rl_rollout.check_resume_processes(self.resume_from, ck.read_state(self.resume_from), acc.num_processes)
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
        # a full fine-tune's KL reference is a frozen copy; LoRA's is the network with its adapters disabled
        self.model, self.ref = denoisers(self.pipe, self.family, cfg, self.device, self.weight_dtype,
                                         needs_ref=not self.lora and cfg.kl_beta > 0)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, self.lr_sched = make_optimizer(cfg, self.params, cfg.lr)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)  # DDP / FSDP wrapping
        self.adapters = rl_rollout.adapter_layers(acc.unwrap_model(self.model)) if self.lora else []
        self.sharded = sharded(acc)  # FSDP/DeepSpeed: the model's and optimizer's state is accelerate's
        self.ema = make_ema(self.params, cfg.ema_decay, self.sharded)
        self.scorers = {spec: load_scorer(served, str(self.device))  # --reward-url: NAME:URL
                        for spec, served in zip(self.weights, cfg.served(self.weights, "--reward"))}
        self.monitors = {spec: load_scorer(spec, str(self.device)) for spec in monitor_specs(cfg.monitor)}
        self.prompts = [p.text for p in load_prompts(cfg.prompts, cfg.prompt_column)]
        self.sampler = self._setup_sampler()
        self.negative = self._setup_guidance()
        self.state = self._setup_resume()
        init_trackers(acc, cfg, "aif-rl")

    def _setup_sampler(self) -> Any:
        """The sampling schedule (and --eval-steps' one), which steps are stochastic, the UNet micro-conditioning."""
        noisy = self.cfg.stochastic_steps
        self.stochastic = [k in noisy for k in range(self.cfg.steps)]  # per step: SDE / DDIM eta 1, else ODE
        r = self.resolution
        self.micro = torch.tensor([time_ids((r, r), (0, 0), (r, r))], dtype=torch.float32, device=self.device)
        self.eval_sampler = self._schedule(self.cfg.eval_steps) if self.cfg.eval_steps else None
        return self._schedule(self.cfg.steps)

    def _schedule(self, steps: int) -> Any:
        """A schedule of `steps` steps: the flow-matching Euler scheduler's sigmas, or DDIM's timesteps (UNet)."""
        config = self.pipe.scheduler.config
        if self.kind == "flow":
            sampler = FlowMatchEulerDiscreteScheduler.from_config(config)
        else:
            sampler = DDIMScheduler.from_config(config)
            if sampler.config.thresholding:
                raise AifError(f"--model {self.cfg.model}: its scheduler uses dynamic thresholding, which DDPO's "
                               "DDIM step does not model; use a model without it")
        patches = (self.resolution // (2 * self.pipe.vae_scale_factor)) ** 2  # the pipelines' image_seq_len
        shift = self.family.sampling_schedule(config, patches, steps) if self.kind == "flow" else {}
        sampler.set_timesteps(steps, device=self.device, **shift)
        return sampler

    def _setup_guidance(self) -> Optional[dict[str, torch.Tensor]]:
        """The empty prompt's encoding for --guidance-scale > 1 (one row); refused for guidance-distilled models."""
        if self.cfg.guidance_scale == 1:
            return None
        denoiser = getattr(self.pipe, "transformer", None) or self.pipe.unet
        if getattr(denoiser.config, "guidance_embeds", False):
            raise AifError(f"--guidance-scale {self.cfg.guidance_scale:g}: {self.cfg.model} is guidance-distilled "
                           "(its denoiser embeds the guidance scale, which aif rl keeps); drop --guidance-scale")
        with torch.no_grad():
            negative = self.family.encode_prompts(self.text, [""])
            positive = self.family.encode_prompts(self.text, ["a"])
        if any(negative[k].shape != positive[k].shape for k in negative):
            raise AifError(f"--guidance-scale: {self.family.name}'s prompt encodings vary in length, so the empty "
                           "prompt cannot be batched with the prompts; use --guidance-scale 1")
        return negative

    def _setup_run_folder(self) -> Optional[Path]:
        """Prepare --out (a different job there is refused unless --overwrite); the checkpoint to continue from."""
        cfg, out = self.cfg, self.out
        if self.main:
            if cfg.overwrite:
                for name in ("checkpoints", "logs", ROLLOUTS, RL_PAIRS_DIR, "metrics.jsonl", "report.json",
                             "report.html", "manifest.json", "config.yaml"):
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
            load_train_state(acc, self.resume_from, self.sharded, self.optimizer,
                             self.lr_sched, acc.process_index,
                             lambda: load_weights(acc.unwrap_model(self.model), self.resume_from, self.lora,
                                                  self.family))
            if self.ema is not None:
                folder = self.resume_from / ck.EMA_DIR
                self.ema.load(lambda: load_weights(acc.unwrap_model(self.model), folder, self.lora, self.family),
                              state[EMA_STEPS])
            self._say(f"resuming from {self.resume_from} (epoch {state['epoch']})")
        if self.main:
            truncate_metrics(self.out / "metrics.jsonl", state["step"])
        return state

    @property
    def trained(self) -> str:
        """What the run trains, for the start line."""
        what = f"LoRA r={self.cfg.lora_rank}" if self.lora else f"full {self.family.denoiser}"
        return what + (f", {self.accelerator.num_processes} processes" if self.accelerator.num_processes > 1 else "")

    def _say(self, msg: str) -> None:
        if self.main:
            note(msg)

    # ---- the epochs -------------------------------------------------------------------------------------------

    def train(self) -> None:
        cfg = self.cfg
        self._say(f"rl {cfg.algorithm} on {self.family.name} {self.trained}: {cfg.prompts_per_epoch} prompts "
                  f"x {cfg.group_size} images per epoch, {cfg.steps} steps, reward {cfg.reward}")
        bar = progress(total=cfg.epochs, initial=self.state["epoch"], desc="rl", unit="epoch",
                       enabled=cfg.progress and self.main)
        while self.state["epoch"] < cfg.epochs:
            t0 = time.perf_counter()
            rollout = self.sample(self.state["epoch"])
            if self.main:  # the images and rewards are every process's (gathered): the main process writes them
                rollout.monitor = monitor_scores(self.monitors, rollout.images, rollout.prompts)
                write_rollout(self.out, self.state["epoch"], rollout, cfg.group_size)
                write_pairs(self.out, self.state["epoch"], rollout.prompts, rollout.images, rollout.rewards.tolist(),
                            cfg.group_size, cfg.reward)
            t1 = time.perf_counter()
            sums = self.update(rollout)
            self.state["epoch"] += 1
            self._log(rollout, sums, t1 - t0, time.perf_counter() - t1)
            bar.update(1)
            if self.state["epoch"] % cfg.checkpoint_every == 0 or self.state["epoch"] == cfg.epochs:
                self.save_checkpoint()
        bar.close()
        if self.main:
            write_rl_report(self.out, cfg)
            finish_output(self.out, read_json(self.out / "manifest.json"), epochs=self.state["epoch"],
                          steps=self.state["step"])
            finish("rl", self.out, f"{self.state['epoch']} {cfg.algorithm} epochs, checkpoints in "
                   f"{self.out / 'checkpoints'}",
                   # the policy is the sampler at the guidance it trained with (bench/RESULTS.md, toy-sd15)
                   f"aif sample --model {cfg.model} --tuned {self.out} --guidance {cfg.guidance_scale:g}")

    def sample(self, epoch: int) -> Rollout:
        return rl_rollout.sample(self, epoch, rl_matching.prepare if self.cfg.algorithm in ("nft", "awm") else None)

    def update(self, rollout: Rollout) -> dict[str, float]:
        """The epoch's updates' metrics, with the --eval-steps pass's rewards (`eval/...`) after every
        --eval-every-th epoch's update."""
        sums = rl_update.update(self, rollout)
        if self.eval_sampler is not None and (self.state["epoch"] + 1) % self.cfg.eval_every == 0:
            sums.update(rl_rollout.evaluate(self))
        return sums

    def _log(self, rollout: Rollout, sums: dict[str, float], t_sample: float, t_update: float) -> None:
        record = {"epoch": self.state["epoch"], "step": self.state["step"],
                  "reward_mean": rollout.rewards.mean().item(),
                  "reward_std": rollout.rewards.std(unbiased=False).item(),
                  **{f"reward/{k}": v.mean().item() for k, v in rollout.raw.items()},
                  "all_equal_share": all_equal_share(rollout.rewards, rollout.prompts),
                  **epoch_extras(rollout.images, rollout.monitor, self.cfg.group_size),
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
        if write_checkpoint(acc, final, self.model, lora=self.lora, family=self.family, sharded=self.sharded,
                            optimizer=self.optimizer, lr_sched=self.lr_sched, ema=self.ema, state=state):
            ck.prune(self.out, self.cfg.keep_checkpoints)
            self._say(f"epoch {epoch}: wrote checkpoint {final}")
        acc.wait_for_everyone()

    def cleanup(self) -> None:
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.wait_for_everyone()

