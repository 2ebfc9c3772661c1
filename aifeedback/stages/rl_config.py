"""`aif rl`'s settings: `RLConfig`, one documented field per option, in groups as TRL's GRPOConfig documents its own:
generation (what each epoch samples), reward (what scores it), loss (the algorithm and its constants), training
(the trainer's options, with `aif train`'s names, read by stages/train_setup.py) and output.

Light on purpose (no torch): `aif --help` reads it; the stage itself is `stages/rl.py`. `preflight()` refuses a
misspelt reward or an algorithm that does not support the model's family before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import input_paths, option, side_problems
from aifeedback.errors import AifError
from aifeedback.families.quantize import QUANTIZATION_CHOICES, QUANTIZATION_HELP, quantization_problems
from aifeedback.rl import ALGORITHMS, AWM_WEIGHTINGS
from aifeedback.stages.reward_options import RewardServerOptions


def reward_weights(spec: str) -> dict[str, float]:
    """'pickscore:1.0,aesthetic:0.5' -> {scorer spec: weight}. A trailing ':NUMBER' is the weight (default 1), so a
    scorer's own MODEL part stays: 'pickscore:tiny:0.5' is scorer 'pickscore:tiny' with weight 0.5, 'color:red' is
    scorer 'color:red' with weight 1."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise AifError(f"--reward {spec!r}: an empty entry; write SCORER[:WEIGHT] entries separated by commas, "
                           "e.g. pickscore:1.0,aesthetic:0.5")
        name, _, last = part.rpartition(":")
        try:
            weight = float(last)
        except ValueError:
            name, weight = part, 1.0
        if not name:
            raise AifError(f"--reward {spec!r}: {part!r} has a weight but no scorer; write SCORER:WEIGHT")
        if name in weights:
            raise AifError(f"--reward {spec!r}: {name} is listed twice; list each scorer once")
        weights[name] = weight
    return weights


def monitor_specs(spec: str) -> list[str]:
    """'aesthetic, toy-fidelity' -> ['aesthetic', 'toy-fidelity'] (each a scorer spec, NAME or NAME:MODEL)."""
    return list(dict.fromkeys(p.strip() for p in spec.split(",") if p.strip()))


def family_kind(model: str) -> Optional[str]:
    """'flow' or 'unet' for a model whose config files can be read here without loading it, else None."""
    from aifeedback.families.resolve import architecture

    found = architecture(model)
    if found is None:
        return None
    return {"transformer": "flow", "unet": "unet"}.get(found[1])


def reward_problems(cfg: RLConfig, specs: list[str]) -> list[str]:
    """--reward-url's problems with the rewards, and pairwise judges (no reward for one image) refused."""
    from aifeedback.scoring.scorers import is_pairwise

    return cfg.reward_problems(specs, "--reward") + [
        f"--reward {spec}: a pairwise judge compares two images and gives no reward to one image, which GRPO needs. "
        f"Fix: use a pointwise judge (vlm, unifiedreward)" for spec in specs if is_pairwise(spec)]


@dataclass
class RLConfig(RewardServerOptions):
    # generation: what each epoch samples from the current policy
    model: str = option("stabilityai/stable-diffusion-3.5-medium", "base model: tiny name, hub id or local diffusers "
                                                                   "folder of a supported family (`aif models`)",
                        path=True)
    prompts: str = option("parti", "prompt source: parti, a .txt/.jsonl/.csv/.tsv file, or a local / hub datasets "
                                   "dataset", path=True)
    prompt_column: Optional[str] = option(None, "column holding the prompt (.jsonl/.csv/.tsv/datasets)")
    prompts_per_epoch: int = option(8, "P: prompts sampled each epoch (the prompt list is taken in order, cycling)",
                                    min=1)
    group_size: int = option(4, "G: images sampled per prompt; advantages are computed within each group", min=2)
    steps: int = option(10, "denoising steps while sampling for training (Flow-GRPO: 10)", min=1, max=1000)
    noise_level: float = option(0.7, "flow families: the SDE's noise level a (std_dev_t = a sqrt(s / (1 - s))); "
                                     "Flow-GRPO: 0.7 (UNet families sample DDIM with eta = 1, as DDPO)", min=0.0)
    resolution: Optional[int] = option(None, "image size in pixels; null = the family's", min=8)
    guidance_scale: float = option(
        1.0, "classifier-free guidance against the empty prompt: the policy's prediction is the guided one, while "
             "sampling and in the update (as flow_grpo train_sd3.py); 1 = none. Flow-GRPO: 4.5; DiffusionNFT, AWM: "
             "1 (no CFG). Guidance-distilled families (FLUX.1-dev, FLUX.2 [dev]) keep their guidance embedding and "
             "refuse a scale above 1", min=1.0)
    sampler: Literal["auto", "sde", "ode"] = option(
        "auto", "how each epoch samples: sde (flow: Flow-GRPO's SDE step; UNet: DDIM eta 1, with per-step "
                "log-probs), ode (deterministic: the Euler step / DDIM eta 0); auto = sde for grpo, ode for nft and "
                "awm (DiffusionNFT config/nft.py: sample.deterministic True), which train on the final images only")
    sde_window: Optional[str] = option(
        None, "window of stochastic steps, written START:END (0-based, END excluded, e.g. 0:2): noise only there, "
              "ODE steps elsewhere; grpo has "
              "log-probs and trains only there (Flow-GRPO-Fast, MixGRPO arXiv 2507.21802; a fixed window); null = "
              "every step")
    timestep_fraction: float = option(
        1.0, "fraction of the steps trained per trajectory (grpo: of its stochastic steps, nft / awm: of all "
             "sampling steps): k = int(count * fraction) of them; grpo: the first k in order (Flow-GRPO's rule: "
             "at 10 steps, 0.99 leaves out the last step, the least noisy, whose log-prob's gradient is the "
             "largest); nft / awm: the first k of a random permutation per trajectory (DiffusionNFT's). "
             "Upstream: 0.99 (Flow-GRPO, DiffusionNFT config/base.py), 0.9 (AWM config/dgx_awm.py)",
        min=0.0, max=1.0)
    eval_steps: int = option(0, "evaluation: every --eval-every epochs, sample one image per evaluation prompt with "
                                "the ODE in this many steps and log its reward as eval/reward; 0 = no evaluation "
                                "(Flow-GRPO, DiffusionNFT: 40)", min=0, max=1000)
    eval_every: int = option(10, "evaluate after every N-th epoch (config/base.py eval_freq: DiffusionNFT 10, "
                                 "Flow-GRPO 20)", min=1)
    eval_prompts: int = option(4, "evaluation prompts: the first N of the prompt list (cycling), the same every time",
                               min=1)
    # reward
    reward: str = option("pickscore", "reward: SCORER[:WEIGHT] entries separated by commas, e.g. "
                                      "pickscore:1.0,aesthetic:0.5 (`aif models` lists the scorers); with several, "
                                      "each is z-scored over the epoch before the weighted sum (rl/advantages.py)")
    monitor: str = option("", "held-out rewards: scorer specs separated by commas (e.g. aesthetic,toy-fidelity); each "
                              "epoch's images are also scored by them and logged as monitor/NAME, never trained on; "
                              "empty = none")
    global_std: bool = option(False, "divide advantages by the std of all the epoch's rewards instead of each "
                                     "group's")
    # loss
    algorithm: Literal[ALGORITHMS.names()] = option("grpo", "online RL algorithm, one of:\n\n" + "\n\n".join(
        f"{k}: {v.help}" for k, v in ALGORITHMS.items()))
    clip_range: Optional[float] = option(None, "PPO ratio clip epsilon (grpo, awm); null = the algorithm's upstream "
                                               "default: grpo 1e-4 (Flow-GRPO), awm 1 (AWM config/dgx_awm.py)",
                                         min=0.0)
    adv_clip_max: float = option(5.0, "advantages are clamped to +-this inside the loss (Flow-GRPO: 5)", min=0.0)
    kl_beta: float = option(0.0, "weight of the KL to the reference (the base model; Flow-GRPO: 0.01 for "
                                 "PickScore, 0.04 for GenEval; nft: mean squared prediction difference, "
                                 "DiffusionNFT 1e-4; awm: the same, AWM 1e-3 to 3e-3)", min=0.0)
    nft_beta: float = option(1.0, "nft: the mixing strength b of the implicit positive / negative policies "
                                  "(DiffusionNFT config/nft.py beta: 1.0; 0.1 for OCR)", min=0.0)
    awm_weighting: Literal[AWM_WEIGHTINGS] = option(
        "ghuber", "awm: the time weighting of the matching likelihood (rl/objectives.py matching_log_prob; AWM "
                  "config/dgx_awm.py: ghuber)")
    ghuber_power: float = option(0.25, "awm: the power p of the ghuber weighting (AWM config/dgx_awm.py: 0.25)",
                                 min=0.0)
    inner_epochs: int = option(1, "passes of updates over each epoch's samples", min=1)
    batch_size: int = option(2, "images per optimizer step (each step accumulates every sampled denoising step)",
                             min=1)
    # training (aif train's names and meaning)
    epochs: int = option(100, "epochs (sample, score, update) to run; a resumed run may extend it", min=1,
                         identity=False)
    lora_rank: int = option(32, "LoRA rank on the denoiser's attention projections (the family's targets); 0 = "
                                "train the whole denoiser (full fine-tuning, as aif train; the KL reference is then a "
                                "frozen copy)", min=0)
    base_quantization: Literal[QUANTIZATION_CHOICES] = option("none", QUANTIZATION_HELP)
    lora_alpha: Optional[float] = option(None, "LoRA alpha; null = the rank (scale 1)", min=0.0)
    lr: float = option(3e-4, "learning rate (Flow-GRPO LoRA: 3e-4)", min=0.0)
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = option("adamw", "adamw, adamw8bit (bitsandbytes, CUDA) or "
                                                                            "adafactor")
    weight_decay: float = option(1e-4, "optimizer weight decay", min=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = option("constant", "lr decay after the warmup")
    warmup_steps: int = option(0, "linear lr warmup in optimizer steps", min=0)
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0 = none", min=0.0)
    ema_decay: float = option(0.0, "keep an exponential moving average of the trained weights (as aif train); "
                                   "checkpoints hold it in ema/", min=0.0)
    skip_nonfinite: int = option(0, "skip up to N optimizer steps whose loss or gradient is NaN/inf (as aif train)",
                                 min=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no", "autocast dtype; frozen parts are stored in it")
    gradient_checkpointing: bool = option(False, "recompute denoiser activations in backward (saves memory)")
    seed: int = option(0, "run seed (LoRA init; epoch e's group of prompt i samples from a generator seeded by "
                                 "(seed, e, i))", min=0)
    # output
    out: str = option("outputs/rl", "run folder: config.yaml, manifest.json, metrics.jsonl (one line per epoch), "
                                    "rollouts/, pairs/ (aif train --data ai reads them), report.json + report.html, "
                                    "checkpoints/", identity=False)
    checkpoint_every: int = option(1, "save a checkpoint every N epochs (and at the last)", min=1, identity=False)
    keep_checkpoints: int = option(3, "keep only the newest K checkpoints; 0 = keep all", min=0, identity=False)
    overwrite: bool = option(False, "start over: delete --out's run (checkpoints, metrics) instead of resuming it or "
                                    "refusing a different job's", identity=False)
    trackers: Literal["tensorboard", "wandb", "none"] = option("none", "experiment tracker (via accelerate) besides "
                                                                       "metrics.jsonl", identity=False)
    progress: bool = option(True, "show a progress bar", identity=False)

    grad_accum = 1  # the trainer's accumulation (train_setup.make_accelerator); rl accumulates over denoising steps
    processes = 1  # the run's processes: RLRecipe.setup sets it (each samples and steps over P / processes groups)

    @property
    def stochastic(self) -> bool:
        """Whether sampling is stochastic (SDE / DDIM eta 1): --sampler, auto = grpo's."""
        return self.sampler == "sde" or (self.sampler == "auto" and self.algorithm == "grpo")

    def window(self) -> tuple[int, int]:
        """--sde-window as (start, end), or the whole schedule."""
        if self.sde_window is None:
            return 0, self.steps
        start, _, end = self.sde_window.partition(":")
        return int(start), int(end)

    def _window_problems(self) -> list[str]:
        if self.sde_window is None:
            return []
        try:
            start, end = self.window()
        except ValueError:
            return [f"--sde-window {self.sde_window!r}: write START:END, two step indices, e.g. 0:2"]
        if not 0 <= start < end <= self.steps:
            return [f"--sde-window {self.sde_window}: needs 0 <= START < END <= steps ({self.steps}); e.g. 0:2"]
        if not self.stochastic:
            return [f"--sde-window {self.sde_window} with ODE sampling (--sampler ode, or auto with "
                    f"{self.algorithm}): use --sampler sde, or drop the window"]
        return []

    @property
    def stochastic_steps(self) -> list[int]:
        """The sampling steps with noise (SDE / DDIM eta 1): the window's, none with ODE sampling."""
        return list(range(*self.window())) if self.stochastic else []

    @property
    def trainable_steps(self) -> list[int]:
        """The steps the update may train: grpo's stochastic ones (they have log-probs), nft's and awm's all."""
        return self.stochastic_steps if self.algorithm == "grpo" else list(range(self.steps))

    @property
    def train_steps(self) -> int:
        """Denoising steps trained per trajectory (Flow-GRPO's num_train_timesteps)."""
        return int(len(self.trainable_steps) * self.timestep_fraction)

    @property
    def ppo_clip(self) -> float:
        """--clip-range, or the algorithm's upstream default."""
        if self.clip_range is not None:
            return self.clip_range
        return 1.0 if self.algorithm == "awm" else 1e-4

    @property
    def updates_per_epoch(self) -> int:
        return self.updates_on(self.processes)

    def updates_on(self, processes: int) -> int:
        """Optimizer steps per epoch on `processes` processes: each steps over its own P / processes groups."""
        share = self.prompts_per_epoch // processes * self.group_size
        return self.inner_epochs * -(-share // self.batch_size)

    @property
    def max_steps(self) -> int:
        """Optimizer steps of the whole run (the lr schedule's length)."""
        return self.epochs * self.updates_per_epoch

    def validate(self) -> list[str]:
        problems = side_problems(self, "resolution")
        trained: set[str] = set()
        try:
            trained = set(reward_weights(self.reward))
            problems += reward_problems(self, list(trained))
        except AifError as e:
            problems.append(str(e))
        problems += [f"--monitor {spec}: it is also a --reward, so it is trained on and is no held-out check; drop it "
                     "from one of them" for spec in monitor_specs(self.monitor) if spec in trained]
        if self.warmup_steps > self.max_steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) exceeds the run's {self.max_steps} optimizer steps")
        if self.ema_decay >= 1:
            problems.append(f"ema_decay {self.ema_decay:g} would never move the average; use a decay below 1")
        problems += quantization_problems(self.base_quantization, self.lora_rank)
        if self.stochastic and self.noise_level == 0:
            problems.append("noise_level 0 makes flow sampling deterministic: its steps have no log-prob to train "
                            "(DDPO's UNet sampling ignores it); use a level above 0, e.g. 0.7")
        if self.algorithm == "grpo" and self.sampler == "ode":
            problems.append("--sampler ode with --algorithm grpo: grpo trains the log-probs of stochastic steps; use "
                            "--sampler sde (or auto), or --algorithm nft / awm, which train on the final images")
        if self.nft_beta == 0:
            problems.append("nft_beta 0 divides nft's loss by zero; use a value above 0 (DiffusionNFT: 1.0)")
        problems += self._window_problems()
        if not problems and self.train_steps == 0:
            count = len(self.trainable_steps)
            problems.append(f"timestep_fraction {self.timestep_fraction:g} of {count} steps trains no step; "
                            f"raise it to at least {1 / count:g}")
        return problems

    def launch_problems(self, processes: int) -> list[str]:
        """What a launch on `processes` processes cannot run: P not split into whole groups, a warmup longer than
        the run's optimizer steps there (each process steps over its own P / processes groups)."""
        if self.prompts_per_epoch % processes:
            low = self.prompts_per_epoch - self.prompts_per_epoch % processes
            return [f"--prompts-per-epoch {self.prompts_per_epoch} cannot be split into whole groups over "
                    f"{processes} processes: each process samples the same number of prompts. Fix: use a multiple of "
                    f"{processes} (e.g. {low or processes} or {low + processes}), or launch a number of processes "
                    f"that divides {self.prompts_per_epoch}"]
        steps = self.epochs * self.updates_on(processes)
        if self.warmup_steps > steps:
            return [f"--warmup-steps {self.warmup_steps} exceeds the run's {steps} optimizer steps on {processes} "
                    f"processes (each steps over its P / {processes} groups); lower it to at most {steps}"]
        return []

    def preflight(self) -> None:
        """Fail fast, before torch is imported: the rewards, the model and whether the algorithm supports its
        family, the prompts, optional packages."""
        from aifeedback.data.prompts import source_kind
        from aifeedback.families.resolve import check_available
        from aifeedback.preflight import check_apart, check_device, check_package, check_quantization, check_scorers

        check_scorers(self.served(reward_weights(self.reward), "--reward"), "--reward")
        check_scorers(monitor_specs(self.monitor), "--monitor")
        check_available(self.model)
        kind = family_kind(self.model)
        if kind is not None:
            ALGORITHMS[self.algorithm].check_kind(kind, self.model)
        source_kind(self.prompts)
        check_apart(self.out, input_paths(self))
        check_device(None, mixed_precision=self.mixed_precision)
        check_quantization(self.base_quantization)
        if self.trackers == "wandb":
            check_package("wandb", "--trackers wandb", "wandb", "use --trackers tensorboard")
        if self.optimizer == "adamw8bit":
            check_package("bitsandbytes", "--optimizer adamw8bit", "bnb", "use --optimizer adamw")
