"""`aif train`'s settings: `TrainConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/train.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from aifeedback.config import input_paths, option, side_problems
from aifeedback.data.labels import COLUMNS_HELP, OPEN_PREFERENCES, RANKED_HELP, RANKED_PAIRINGS
from aifeedback.data.mapping import columns_problems
from aifeedback.families.quantize import (
    QUANTIZATION_CHOICES,
    QUANTIZATION_HELP,
    quantization_problems,
)
from aifeedback.losses import LOSSES

MAPO_BETA_MAX = 10.0  # MaPO's beta is ~0.1; anything above this is a DPO beta left in place by mistake
DEFAULT_VALIDATION_PROMPTS = [
    "a photo of a cat wearing a red hat",
    "an astronaut riding a horse, oil painting",
    "a bowl of fruit on a wooden table, studio lighting",
]


@dataclass
class TrainConfig:
    # data
    data: Literal["human", "ai"] = option("human", "human: preference pairs any pair source reads (hub id or local "
                                                   "folder); ai: an `aif score` output folder (or an `aif rl` run's, "
                                                   "its pairs/)")
    dataset: str = option(OPEN_PREFERENCES, f"hub id (e.g. {OPEN_PREFERENCES}, TRL layout), "
                          "local folder (Pick-a-Pic or TRL Parquet, HPDv2, ImageRewardDB, or any layout with "
                          "--columns), or `aif score` output", path=True)
    split: str = option("train", "dataset split (kashif/pickascore has only 'validation'); ignored for `aif score` "
                                 "outputs")
    streaming: bool = option(False, "stream the dataset instead of downloading it (hub ids; a local folder is read in "
                                    "place anyway): each process reads its own shards, a resume reads no pair again")
    shuffle_buffer: int = option(1000, "when streaming: pairs per block, each block visited in a seeded order", min=1)
    max_pairs: Optional[int] = option(None, "use only the first N usable pairs (after dropping ties); null = "
                                            "all", min=1)
    resolution: Optional[int] = option(None, "training resolution in pixels; null = the family's: 1024 for SDXL, "
                                             "SD3 and FLUX, 512 for SD1.5", min=8)
    columns: list[str] = option([], COLUMNS_HELP)
    ranked_pairs: Literal[RANKED_PAIRINGS] = option("all", RANKED_HELP)
    random_crop: bool = option(False, "random square crop instead of a centre crop")
    flip: bool = option(True, "random horizontal flip (same flip for winner and loser)")
    caption_dropout: float = option(0.0, "probability of training a pair with the empty prompt (paper: 0.2 for "
                                         "SDXL)", min=0.0, max=1.0)
    num_workers: int = option(2, "data loader worker processes (0 = load in the main process)", min=0, identity=False)
    # model and objective
    model: str = option("stabilityai/stable-diffusion-xl-base-1.0", "base model: tiny name, hub id or local diffusers "
                                                                    "folder of a supported family (`aif models`)",
                        path=True)
    vae: Optional[str] = option(None, "VAE override, e.g. madebyollin/sdxl-vae-fp16-fix for fp16 SDXL", path=True)
    # one paragraph per loss: --help shows each on its own line (README "Preference objectives" has the formulas)
    loss: Literal[LOSSES.names()] = option("dpo", "objective, one of:\n\n" + "\n\n".join(
        f"{k}: {v.help}" for k, v in LOSSES.items()))
    beta: float = option(5000.0, "DPO beta WITH the paper's 0.5 factor: 5000 for SDXL, 2000 for SD1.5 (code folding "
                                 "the 0.5 in uses half); kto: the official beta as is (1000)", min=0.0)
    lora_rank: int = option(0, "LoRA rank on the denoiser's attention projections (the family's targets); 0 = full "
                               "fine-tune", min=0)
    lora_alpha: Optional[float] = option(None, "LoRA alpha; null = the rank (scale 1)", min=0.0)
    base_quantization: Literal[QUANTIZATION_CHOICES] = option("none", QUANTIZATION_HELP)
    # optimisation
    lr: float = option(1e-8, "learning rate (multiplied by the pairs per optimizer step when scale_lr is on)", min=0.0)
    scale_lr: bool = option(True, "multiply lr by pairs per optimizer step, as the public Diffusion-DPO launchers do "
                                  "(1e-8 x 2048 = 2.048e-5)")
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = option("adamw", "adamw, adamw8bit (bitsandbytes, CUDA) or "
                                                                            "adafactor (paper, SDXL)")
    weight_decay: float = option(0.01, "decoupled weight decay", min=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = option("constant", "lr decay after the warmup")
    warmup_steps: int = option(0, "linear lr warmup in optimizer steps (paper: 25% of the steps)", min=0)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this value; 0 = no clipping", min=0.0)
    snr_gamma: float = option(0.0, "min-SNR loss weighting (Hang et al. 2023) with this gamma, as diffusers' "
                                   "train_text_to_image.py --snr_gamma (5.0 recommended there): each denoising error "
                                   "weighted by min(SNR, gamma)/SNR (epsilon) or /(SNR+1) (v-prediction), policy and "
                                   "reference alike; 0 = off. DDPM-style (UNet) families only", min=0.0)
    noise_offset: float = option(0.0, "offset noise (diffusers' --noise_offset, e.g. 0.1 for SDXL fine-tunes): adds "
                                      "offset * N(0,1) per image and channel to the training noise, so the model can "
                                      "learn darker and brighter images; 0 = off. UNet families only", min=0.0)
    ema_decay: float = option(0.0, "keep an exponential moving average of the trained weights (diffusers' EMAModel: "
                                   "decay per step min(ema_decay, (1+n)/(10+n)), 0.9999 is its default); checkpoints "
                                   "hold it in ema/, resume restores it, and `aif export` exports it as the final "
                                   "model; 0 = off (costs one more copy of the trained weights)", min=0.0)
    skip_nonfinite: int = option(0, "skip up to N optimizer steps whose loss or gradient is NaN/inf (no update; "
                                    "counted as skipped_nonfinite in metrics.jsonl); 0 = stop at the first with an "
                                    "error. Not part of the run's identity: it changes nothing unless it triggers, and "
                                    "a stopped run is resumed with it", min=0, identity=False)
    max_steps: int = option(2000, "optimizer steps to train (a resumed run may extend it)", min=1, identity=False)
    batch_size: int = option(1, "pairs per process per micro-step", min=1)
    grad_accum: int = option(1, "micro-steps accumulated per optimizer step", min=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no", "autocast dtype; frozen parts are stored in it "
                                                                  "(paper: fp16/bf16)")
    gradient_checkpointing: bool = option(False, "recompute denoiser activations in backward (saves memory, ~30% "
                                                 "slower)", identity=False)
    seed: int = option(0, "seed of data order, crops, noise and timesteps")
    # output, checkpoints, validation
    out: str = option("runs/dpo", "run folder (config, metrics.jsonl, checkpoints/, validation/)", identity=False)
    overwrite: bool = option(False, "replace a different run already in --out (its checkpoints are "
                                    "deleted)", identity=False)
    resume: str = option("auto", "auto: continue from --out's latest checkpoint if any; latest: must; none: start "
                                 "fresh; or a checkpoint PATH", identity=False)
    checkpoint_every: int = option(500, "save a checkpoint every N optimizer steps (and at the "
                                        "end)", min=1, identity=False)
    keep_checkpoints: int = option(3, "keep only the newest K checkpoints; 0 = keep all", min=0, identity=False)
    validation_every: int = option(500, "save a validation image grid every N steps; 0 = never", min=0, identity=False)
    validation_prompts: list[str] = option(DEFAULT_VALIDATION_PROMPTS, "validation prompts (grid rows)", identity=False)
    validation_seeds: list[int] = option([0, 1], "validation seeds (grid columns)", identity=False)
    validation_steps: Optional[int] = option(None, "sampling steps for validation images (default: the model's own, "
                                                   "e.g. 1 for SDXL Turbo, else 25)", min=1, identity=False)
    validation_guidance: Optional[float] = option(None, "classifier-free guidance for validation images (default: "
                                                        "the model's, as in aif generate)", min=0.0, identity=False)
    trackers: Literal["tensorboard", "wandb", "none"] = option("tensorboard", "experiment tracker (via accelerate) "
                                                                              "besides metrics.jsonl", identity=False)
    progress: bool = option(True, "show a progress bar (in a log: a plain line every 30 s)", identity=False)

    def validate(self) -> list[str]:
        problems = []
        if self.lora_alpha is not None and self.lora_rank == 0:
            problems.append("lora_alpha is set but lora_rank is 0 (full fine-tune); set --lora-rank")
        if self.warmup_steps > self.max_steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        problems += columns_problems(self.columns) + side_problems(self, "resolution")
        problems += quantization_problems(self.base_quantization, self.lora_rank)
        if self.ema_decay >= 1:
            problems.append(f"ema_decay {self.ema_decay:g} would never move the average; use a decay below 1 (e.g. "
                            "0.9999), or 0 for no EMA")
        if self.streaming and self.max_pairs is not None:
            problems.append("max_pairs cannot be combined with streaming")
        if self.streaming and LOSSES[self.loss].unpaired:
            problems.append(f"streaming: --loss {self.loss} reads its unpaired images from local files; drop "
                            "--streaming")
        if self.loss == "mapo" and self.beta > MAPO_BETA_MAX:  # the DPO default 5000 would drown MaPO's SFT term
            problems.append(f"beta {self.beta:g} is a DPO-scale beta; MaPO's beta (beta_mapo) weighs its margin term "
                            f"against the winner MSE, 0.1 in the paper: pass --beta 0.1")
        return problems

    def preflight(self) -> None:
        """Fail fast, before torch is imported: the model, VAE, dataset, --resume PATH and optional packages."""
        from aifeedback.data.pairs import check_source
        from aifeedback.families.resolve import check_available, check_trained_for, check_vae_class
        from aifeedback.preflight import check_apart, check_device, check_package, check_quantization
        from aifeedback.storage.checkpoints import resolve_checkpoint

        check_available(self.model)
        if self.vae:
            check_available(self.vae, "VAE")
            check_vae_class(self.model, self.vae)
        check_source(self.data, self.dataset)
        inputs = input_paths(self)
        if self.resume not in ("auto", "latest", "none"):
            ckpt = resolve_checkpoint(self.resume).resolve()
            check_trained_for(self.model, ckpt, f"--resume {self.resume}")
            if Path(self.out).expanduser().resolve() not in ckpt.parents:  # one of this run's own: resuming keeps it
                inputs["resume"] = ckpt
        check_apart(self.out, inputs)  # the inputs exist: an --out over one would clobber it
        check_device(None, mixed_precision=self.mixed_precision)
        if self.trackers == "wandb":  # accelerate would only warn and train without a tracker
            check_package("wandb", "--trackers wandb", "wandb", "use --trackers tensorboard")
        if self.optimizer == "adamw8bit":
            check_package("bitsandbytes", "--optimizer adamw8bit", "bnb", "use --optimizer adamw")
        check_quantization(self.base_quantization)
