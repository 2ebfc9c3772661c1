"""`aif train`: Diffusion-DPO (or SFT) of a text-to-image denoiser on human or AI-labelled preference pairs.

The trainer is a recipe class (torchtune style), `TrainRecipe`: `setup()` builds each component in a small
`_setup_*` method, `train()` is the loop, `save_checkpoint()` and `cleanup()` stand apart. What differs between
model families (text encoders, conditioning, noise and target, LoRA layers) is asked of the model's `Family`
(families/base.py), so the loop has no per-family branch.

Run folder: config.yaml, manifest.json, metrics.jsonl (one line per optimizer step), logs/ (tensorboard),
validation/step-NNNNNN.png (step 0: the untrained baseline; the grids also go to the tracker),
checkpoints/checkpoint-NNNNNN/ (see checkpoints.py). A run killed at any moment and
restarted with the same command continues from its latest checkpoint and ends with the same weights.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from aifeedback.config import identity_dict, save_config, to_dict
from aifeedback.console import finish, note, progress, quiet_libraries
from aifeedback.data import pairs as D
from aifeedback.data import unpaired as U
from aifeedback.data.cache import StoredPosterior, cache_key, is_cache, open_cache
from aifeedback.data.sources import check_layout
from aifeedback.data.stream import PairStream
from aifeedback.dist import process_state, sharded
from aifeedback.errors import AifError
from aifeedback.families import detect
from aifeedback.families.base import Family, UNetFamily, min_snr_weights
from aifeedback.families.loading import load_pipeline
from aifeedback.families.quantize import quantized_base_dtype
from aifeedback.families.resolve import model_defaults
from aifeedback.losses import LOSSES, get_loss
from aifeedback.losses.base import denoising_mse
from aifeedback.stages.train_checkpoint import load_train_state, load_weights, write_checkpoint
from aifeedback.stages.train_config import TrainConfig
from aifeedback.stages.train_ema import STATE_KEY as EMA_STEPS
from aifeedback.stages.train_guard import check_finite_weights, clip_gradients, finite_update
from aifeedback.stages.train_resume import finished_step, input_fingerprint, resume_point, truncate_metrics
from aifeedback.stages.train_setup import (
    WEIGHT_DTYPES,
    denoisers,
    frozen_parts,
    init_trackers,
    make_accelerator,
    make_ema,
    make_optimizer,
)
from aifeedback.stages.train_validation import track_validation, validation_grid
from aifeedback.storage import checkpoints as ck
from aifeedback.storage.files import read_json
from aifeedback.storage.manifest import finish_output, prepare_output


def run(cfg: TrainConfig) -> Path:
    """Train; returns the run folder."""
    cfg.preflight()
    quiet_libraries()
    recipe = TrainRecipe(cfg)
    check_layout(cfg.dataset, recipe.unpaired, cfg.columns)  # pairs for a paired loss, images for kto: before the model
    done = finished_step(cfg, recipe.out)
    if done is not None:  # a rerun of a finished run: nothing to train, so no model to load
        if process_state().is_main_process:
            print(f"already complete: {recipe.out} (step {done} of --max-steps {cfg.max_steps}; raise it to train on)")
        return recipe.out
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return recipe.out


class TrainRecipe:
    """Preference fine-tuning of a text-to-image denoiser, one process of a (possibly multi-process) run.

    Supports:
    - objectives: every registered loss (`LOSSES`): Diffusion-DPO, hinge, IPO, SFT, MaPO (reference-free) on pairs,
      Diffusion-KTO on single images labelled desirable or not; per-sample weights (the family's, min-SNR);
    - every registered model family (SD1.5, SDXL, SDXL refiner, SD3/SD3.5, FLUX.1): conditioning, noise and target
      (DDPM epsilon/v or flow-matching velocity) come from its `Family`;
    - LoRA (peft; the reference is the same network with its adapters disabled) or a full fine-tune (the reference
      is a frozen copy in the compute dtype), both run in train mode, so with one shared noise and timestep per
      pair the first DPO loss is exactly ln 2;
    - accelerate: mixed precision (fp16/bf16 autocast, frozen parts stored in it), gradient accumulation,
      multi-process DDP, FSDP/DeepSpeed (sharded state dicts are gathered when saving; every process joins the
      reference and validation forwards);
    - gradient checkpointing; AdamW, 8-bit AdamW, Adafactor; constant/linear/cosine lr with warmup; EMA of the
      trained weights; offset noise;
    - data: every registered pair source (data/sources.py), read in place or streamed (each process its own shards),
      with stored latents when they fit or an `aif cache` output that matches;
    - exact resume from the latest (or a given) checkpoint, including data position and every process's RNG;
    - metrics.jsonl, tensorboard/wandb trackers, validation image grids (also sent to the tracker, from a step-0
      baseline of the untrained model), a progress bar.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.lora = cfg.lora_rank > 0
        self.loss_fn, self.needs_ref = get_loss(cfg.loss)
        self.unpaired = LOSSES[cfg.loss].unpaired  # Diffusion-KTO: single labelled images instead of pairs

    # ---- setup ------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build every component, in the order that keeps the RNG streams of earlier versions (bitwise resumes)."""
        self.accelerator = make_accelerator(self.cfg, self.out)
        acc = self.accelerator
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        self.device = acc.device
        self.resume_from = self._setup_run_folder()
        set_seed(self.cfg.seed, device_specific=True)  # noise/timesteps differ per process; checkpoints save each RNG
        self.pipe, self.family = self._setup_pipeline()
        self.resolution = self.cfg.resolution or model_defaults(self.cfg.model).resolution or self.family.resolution
        self.weight_dtype = WEIGHT_DTYPES[acc.mixed_precision]
        self.text, self.vae = frozen_parts(self.pipe, self.family, self.device, self.weight_dtype, bool(self.cfg.vae))
        self.scheduler = self.family.noise_scheduler(self.pipe)
        self._check_family_options()
        if "timesteps" in inspect.signature(self.loss_fn).parameters:  # MaPO scales its margin by the scheduler's T
            self.loss_fn = functools.partial(self.loss_fn, timesteps=self.scheduler.config.num_train_timesteps)
        self.model, self.ref = self._setup_models()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.pairs_per_step = self.cfg.batch_size * self.cfg.grad_accum * self.world
        self.lr = self.cfg.lr * self.pairs_per_step if self.cfg.scale_lr else self.cfg.lr
        optimizer, self.lr_sched = make_optimizer(self.cfg, self.params, self.lr)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)  # DDP / FSDP wrapping
        self.sharded = sharded(acc)  # FSDP/DeepSpeed: the model's and optimizer's sharded state is accelerate's
        self.ema = make_ema(self.params, self.cfg.ema_decay, self.sharded)
        self.table, self.stats, self.dataset, self.n_pairs, self.transform = self._setup_data()
        self.state = self._setup_resume()
        self.step = self.state["step"]
        self.batches = self._setup_batches()
        init_trackers(acc, self.cfg, "aif-train")

    def _setup_run_folder(self) -> Optional[Path]:
        """Prepare --out (its manifest and config); returns the checkpoint to continue from, or None."""
        cfg, out = self.cfg, self.out
        resume_from = resume_point(cfg, out)
        if self.main:
            if resume_from is None and cfg.overwrite:
                for name in ("checkpoints", "logs", "validation", "metrics.jsonl", "manifest.json", "config.yaml"):
                    p = out / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            prepare_output(out, "train", to_dict(cfg), identity_dict(cfg), overwrite=cfg.overwrite,
                           inputs=input_fingerprint(cfg))
            save_config(cfg, out / "config.yaml")
        self.accelerator.wait_for_everyone()
        return resume_from

    def _setup_pipeline(self) -> tuple[Any, Family]:
        # A bf16 LoRA run keeps every part in bf16 (the trainable adapters are created later, in fp32): loading it so
        # gives the same weights and halves the host RAM at start-up (FLUX.1-dev: ~34 GB instead of ~67).
        mp, quant = self.accelerator.mixed_precision, self.cfg.base_quantization
        dtype = "bfloat16" if self.lora and mp == "bf16" else "float32"
        dtype = quantized_base_dtype(quant, mp, self.device.type, dtype)  # a quantized base: see there
        pipe = load_pipeline(self.cfg.model, dtype, "cpu", vae=self.cfg.vae, quantization=quant)
        return pipe, detect(pipe)

    def _setup_models(self) -> tuple[Any, Any]:
        """The trained denoiser (with LoRA adapters, or all of it) and the frozen reference copy (full fine-tune)."""
        return denoisers(self.pipe, self.family, self.cfg, self.device, self.weight_dtype, self.needs_ref)

    def _load_weights(self, model: Any, folder: Path) -> None:
        """Load weights saved by a checkpoint (or its ema/ folder) into the unwrapped model."""
        load_weights(model, folder, self.lora, self.family)

    def _check_family_options(self) -> None:
        """Options that only some model families support: refused with the reason, before any training."""
        cfg, name = self.cfg, self.family.name
        if cfg.snr_gamma and not hasattr(self.scheduler, "alphas_cumprod"):
            raise AifError(f"--snr-gamma: min-SNR weighting needs a DDPM-style noise schedule (alphas_cumprod); the "
                           f"{name} family trains with flow matching ({type(self.scheduler).__name__}), whose loss "
                           "weighting is its own. Fix: drop --snr-gamma")
        if cfg.noise_offset and not isinstance(self.family, UNetFamily):
            raise AifError(f"--noise-offset is implemented for the DDPM-style UNet families (sd15, sdxl), not "
                           f"{name}. Fix: drop --noise-offset")

    def _setup_data(self) -> tuple[Any, D.PairStats, Any, Optional[int], D.Transform]:
        """(table, label counts, map-style dataset or None when streaming, number of pairs or None, transform)."""
        cfg, res = self.cfg, self.resolution
        if is_cache(cfg.dataset):
            return self._setup_cached_data()
        table = D.open_table(cfg.data, cfg.dataset, cfg.split, cfg.streaming, unpaired=self.unpaired,
                             columns=cfg.columns, pairing=cfg.ranked_pairs)
        transform = D.Transform(res, cfg.random_crop, cfg.flip, cfg.caption_dropout, unpaired=self.unpaired)
        if cfg.streaming:
            return table, D.PairStats(), None, None, transform
        pairs, stats = (U.filter_desirable if self.unpaired else D.filter_labels)(table, cfg.max_pairs)
        self._say(stats.summary(cfg.dataset))
        if not pairs:
            raise D.no_pairs_error(cfg.dataset, stats)
        # the latents as stored and encoded (FLUX.1 packs them inside predict; FLUX.2 stores them patchified)
        columns = U.LATENTS if self.unpaired else D.LATENT_COLUMNS
        latent_shape, why = D.stored_latent_shape(table, pairs, self.family.latent_shape(self.vae.config, res),
                                                  D.latent_source(cfg.dataset), {"model": cfg.model, "vae": cfg.vae},
                                                  columns)
        if any(c in table.column_names for c in columns):
            self._say(why)
        transform.latent_shape = latent_shape
        dataset = D.PairDataset(table, pairs, transform, cfg.seed, window=cfg.batch_size * self.world)
        return table, stats, dataset, len(pairs), transform

    def _setup_cached_data(self) -> tuple[Any, D.PairStats, Any, int, Any]:
        """_setup_data for an `aif cache` output made for this model, VAE, resolution, crop/flip and dtype (else
        refused): the step reads its posteriors and prompt conditioning instead of running the encoders."""
        cfg = self.cfg
        if cfg.streaming or self.unpaired:
            raise AifError(f"{cfg.dataset} is an `aif cache` output (pairs, read in place): it cannot be streamed nor "
                           f"trained with the unpaired loss {cfg.loss}. Fix: drop --streaming, or use a paired loss")
        key = cache_key(cfg, self.family.name, self.resolution, self.accelerator.mixed_precision)
        rows, transform = open_cache(cfg.dataset, key, cfg.caption_dropout)
        pairs, stats = D.filter_labels(rows, cfg.max_pairs)
        self._say(f"{stats.summary(cfg.dataset)}; using its cached latents and prompt embeddings (no VAE or text "
                  "encoder in the step)")
        dataset = D.PairDataset(rows, pairs, transform, cfg.seed, window=cfg.batch_size * self.world)
        return rows, stats, dataset, len(pairs), transform

    def _setup_resume(self) -> dict[str, Any]:
        """The trainer state: a fresh one, or the resumed checkpoint's (whose optimizer, lr and RNGs are loaded)."""
        state = {"step": 0, "bad_images": 0}
        if self.resume_from is not None:
            state = ck.read_state(self.resume_from)
            if state.get("processes", self.world) != self.world:  # data order and per-process RNGs depend on it
                raise AifError(f"{self.resume_from} was written by a run with {state['processes']} processes; resume "
                               f"it with the same number (this one has {self.world}), or start a new run with another "
                               "--out.")
            self._load_train_state(self.resume_from)
            self._resume_ema(state)
            self._say(f"resuming from {self.resume_from} (step {state['step']})")
        if self.main:
            truncate_metrics(self.out / "metrics.jsonl", state["step"])
        return state

    def _resume_ema(self, state: dict[str, Any]) -> None:
        """The resumed checkpoint's moving average (ema/), exactly; one without it starts the average anew."""
        if self.ema is None:
            return
        folder = self.resume_from / ck.EMA_DIR
        if not folder.is_dir():
            self._say(f"{self.resume_from} holds no EMA weights ({ck.EMA_DIR}/): the average starts from its weights")
            return
        model = self.accelerator.unwrap_model(self.model)
        self.ema.load(lambda: self._load_weights(model, folder), state[EMA_STEPS])

    def _setup_batches(self) -> Iterator[dict[str, Any]]:
        """This process's batches, from the data position of the current step on."""
        cfg = self.cfg
        start_micro = self.step * cfg.grad_accum  # global micro-batches already consumed: the data position
        if cfg.streaming:  # each process reads its own part of the stream, from where its checkpoint says
            return PairStream(self.table, self.transform, cfg.batch_size, self.rank, self.world, cfg.seed,
                              cfg.shuffle_buffer, self.stats, stream_state(self.state, self.rank, start_micro))
        return D.batches(self.dataset, cfg.batch_size, self.rank, self.world, start_micro, cfg.num_workers, cfg.seed)

    def _say(self, msg: str) -> None:
        if self.main:
            note(msg)

    # ---- the loop ---------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Optimizer steps up to --max-steps, with metrics, validation grids and checkpoints; then publish the run."""
        cfg = self.cfg
        what = f"LoRA r={cfg.lora_rank}" if self.lora else f"full {self.family.denoiser}"
        pairs = self.n_pairs if self.n_pairs is not None else "streamed"
        unit = "images" if self.unpaired else "pairs"
        self._say(f"training {self.family.name} {what} with {cfg.loss} on {pairs} {unit}: {self.pairs_per_step} "
                  f"{unit}/step, lr {self.lr:g}, beta {cfg.beta:g}, {self.resolution}px, {self.world} process(es)")
        bar = progress(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                       enabled=cfg.progress and self.main)
        if cfg.validation_every and self.step == 0:  # the untrained baseline; a resumed run already has it
            self._validation()
        while self.step < cfg.max_steps:
            t_start = time.perf_counter()
            sums, grad_norm, bad = self._optimizer_step()
            self.lr_sched.step()
            if self.ema is not None:
                self.ema.step()
            self.step += 1
            self._log(sums, grad_norm, bad, time.perf_counter() - t_start, bar)
            if cfg.validation_every and self.step % cfg.validation_every == 0:
                self._validation()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        if self.main:
            self._publish()

    def _validation(self) -> None:
        """The validation grid of the current weights: a PNG in validation/ and images in the active tracker."""
        grid, images = validation_grid(self.cfg, self.accelerator, self.pipe, self.family, self.model, self.vae,
                                 self.resolution, self.step, self.out)
        if self.main:
            track_validation(self.accelerator.trackers, self.cfg, images, self.step)
        baseline = " (untrained baseline)" if self.step == 0 else ""
        self._say(f"step {self.step}{baseline}: wrote validation grid {grid}")

    def _optimizer_step(self) -> tuple[dict[str, float], torch.Tensor, int]:
        """grad_accum micro-steps: (mean loss and metrics, gradient norm, this process's unreadable pairs)."""
        sums: dict[str, float] = defaultdict(float)
        grad_norm = torch.zeros((), device=self.device)
        bad = 0
        self.losses_finite = True  # this process's micro-step losses so far; _finite_update reads it
        for _ in range(self.cfg.grad_accum):
            batch = next(self.batches)
            for row, why in batch["skipped"]:
                bad += 1
                tqdm.write(f"{'' if self.world == 1 else f'[process {self.rank}] '}warning: skipped unreadable pair "
                           f"at row {row} of {self.cfg.dataset}: {why}", file=sys.stderr)
            loss, metrics, norm = self._step(batch)
            if norm is not None:
                grad_norm = norm
            sums["loss"] += loss.detach().item() / self.cfg.grad_accum
            for k, v in metrics.items():
                sums[k] += v.item() / self.cfg.grad_accum
        return sums, grad_norm, bad

    @torch.no_grad()
    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """(noisy latents, timesteps, target, prompt conditioning, micro-conditioning); rows: B winners, B losers
        (unpaired data: B images)."""
        key = next(k for k in ("latents", "posteriors", "pixels") if k in batch)
        groups = batch[key].shape[1]  # images per example: 2 for a pair, 1 for an unpaired image
        images = torch.cat(batch[key].unbind(1)).to(self.device)
        if key == "latents":  # stored latents: already in denoiser space
            latents = images
        elif key == "posteriors":  # an `aif cache`: the family samples and normalises them as the VAE's output
            latents = self.family.encode_images(StoredPosterior(self.vae, images), images)
        else:
            latents = self.family.encode_images(self.vae, images)
        # The noise is drawn like the latents (randn_like keeps their memory layout, and draws in layout order): make
        # it independent of the layout the VAE's kernels chose (channels-last on some CPUs), so images, stored
        # latents and an `aif cache` give the same noise on every machine.
        latents = latents.contiguous()
        if "prompts" in batch:
            prompts = {k: v.to(self.device) for k, v in batch["prompts"].items()}
        else:
            prompts = self.family.encode_prompts(self.text, batch["captions"])
        prompts = {k: v.repeat(groups, *[1] * (v.dim() - 1)) for k, v in prompts.items()}
        micro = torch.cat(batch["time_ids"].unbind(1))
        offset = {"noise_offset": self.cfg.noise_offset} if self.cfg.noise_offset else {}  # UNet families only
        noisy, t, target = self.family.training_noise(self.scheduler, latents, groups=groups, **offset)  # per pair
        return noisy, t, target, prompts, micro

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], Optional[torch.Tensor]]:
        """One micro-step: forward, loss, backward, and (at the end of an accumulation) clip and optimizer step."""
        acc, predict = self.accelerator, self.family.predict
        noisy, t, target, prompts, micro = self._inputs(batch)
        weights = self.family.loss_weights(self.scheduler, t)  # per-sample weights of the error (None: uniform)
        with acc.accumulate(self.model):
            if self.cfg.snr_gamma:  # min-SNR multiplies in (DDPM families; _check_family_options)
                snr = min_snr_weights(self.scheduler, t, self.cfg.snr_gamma)
                weights = snr if weights is None else weights * snr
            with acc.autocast():
                model_err = denoising_mse(predict(self.model, noisy, t, prompts, micro), target, weights)
                ref_err = None
                if self.needs_ref:
                    with torch.no_grad():
                        ref_err = self._reference_mse(noisy, t, prompts, micro, target, weights)
                if self.unpaired:
                    desirable = batch["desirable"].to(self.device)
                    loss, metrics = self.loss_fn(model_err, ref_err, desirable, self.cfg.beta)
                else:
                    ref_w, ref_l = ref_err.chunk(2) if ref_err is not None else (None, None)
                    loss, metrics = self.loss_fn(*model_err.chunk(2), ref_w, ref_l, self.cfg.beta)
            self.losses_finite &= bool(torch.isfinite(loss.detach()))
            acc.backward(loss)
            norm = (clip_gradients(acc, self.model, self.params, self.cfg.max_grad_norm or math.inf)
                    if acc.sync_gradients else None)
            if norm is None or finite_update(acc, norm, self.losses_finite, self.state, self.step + 1,
                                             self.cfg.skip_nonfinite, self.out, self._say):
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, metrics, norm

    def _reference_mse(self, noisy, t, prompts, micro, target, weights=None) -> torch.Tensor:
        if self.ref is not None:
            return denoising_mse(self.family.predict(self.ref, noisy, t, prompts, micro), target, weights)
        # LoRA: the reference is the network without its adapters. The forward goes through the prepared (wrapped)
        # model: under FSDP/ZeRO-3 its forward gathers the sharded parameters, a collective every process joins.
        base = self.accelerator.unwrap_model(self.model)
        base.disable_adapters()
        try:
            return denoising_mse(self.family.predict(self.model, noisy, t, prompts, micro), target, weights)
        finally:
            base.enable_adapters()

    def _log(self, sums: dict[str, float], grad_norm: torch.Tensor, bad: int, seconds: float, bar: Any) -> None:
        """Metrics: the mean over micro-steps and processes; unreadable pairs: the sum. One collective for both."""
        keys = sorted(sums)
        totals = self.accelerator.reduce(torch.tensor([sums[k] for k in keys] + [bad], device=self.device),
                                         reduction="sum")
        avg = (totals[:-1] / self.world).tolist()
        self.state["bad_images"] += int(totals[-1])
        step, n_pairs = self.step, self.n_pairs
        record = {"step": step, **{k: round(v, 8) for k, v in zip(keys, avg, strict=True)},
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "lr": self.lr_sched.get_last_lr()[0], "pairs_per_s": round(self.pairs_per_step / seconds, 3),
                  "epoch": round(step * self.pairs_per_step / n_pairs, 4) if n_pairs else None,
                  "bad_images": self.state["bad_images"]}
        if self.cfg.skip_nonfinite:
            record["skipped_nonfinite"] = self.state.get("skipped_nonfinite", 0)
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record.get('implicit_acc', float('nan')):.2f}",
                            pairs_s=f"{record['pairs_per_s']:.1f}")
            bar.update(1)
        if self.cfg.trackers != "none":
            self.accelerator.log({f"train/{k}": v for k, v in record.items()
                                  if isinstance(v, (int, float)) and k != "step"}, step=step)

    # ---- checkpoints and the end ------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """checkpoints/checkpoint-NNNNNN of the current step: written under a temporary name, renamed when complete
        (--resume only ever sees complete checkpoints), then older ones pruned."""
        acc, step = self.accelerator, self.step
        check_finite_weights(acc, self.params, self.out, step)
        final = self.out / "checkpoints" / ck.checkpoint_name(step)
        position = step * self.cfg.grad_accum * self.cfg.batch_size * self.world
        state = dict(self.state, step=step, processes=self.world, data_position=position)
        # per process: where its stream continues (a collective)
        collect = (lambda: {"streams": gather_object([self.batches.state()])}) if self.cfg.streaming else None
        if write_checkpoint(acc, final, self.model, lora=self.lora, family=self.family, sharded=self.sharded,
                            optimizer=self.optimizer, lr_sched=self.lr_sched, ema=self.ema, state=state,
                            collect=collect):
            ck.prune(self.out, self.cfg.keep_checkpoints)
            self._say(f"step {step}: wrote checkpoint {final}")
        acc.wait_for_everyone()

    def _load_train_state(self, folder: Path) -> None:
        """A checkpoint's weights and train state, strictly; nothing unpickled beyond plain data."""
        load_train_state(self.accelerator, folder, self.sharded, self.optimizer,
                         self.lr_sched, self.rank,
                         lambda: self._load_weights(self.accelerator.unwrap_model(self.model), folder))

    def _publish(self) -> None:
        """Finish the manifest and tell the user what to run next (main process)."""
        cfg, out, stats = self.cfg, self.out, self.stats
        finish_output(out, read_json(out / "manifest.json"), steps=self.step, pairs=stats.kept, rows=stats.rows,
                      ties_dropped=stats.ties, bad_labels=stats.bad_labels, bad_images=self.state["bad_images"],
                      processes=self.world)
        pairs = self.n_pairs if self.n_pairs is not None else "streamed"
        unit = "images" if self.unpaired else "pairs"
        finish("train", out, f"{self.step} {cfg.loss} steps on {pairs} {unit}, checkpoints in {out / 'checkpoints'}",
               f"aif eval --base {cfg.model} --tuned {out}", f"aif sample --model {cfg.model} --tuned {out}",
               f"aif export {out} --out {out}-export")

    def cleanup(self) -> None:
        """Close the trackers but keep the process group (end_training() would destroy it), so a stage run next in
        these processes (eval after train in `aif demo`, a notebook) still works."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.wait_for_everyone()


def stream_state(state: dict[str, Any], rank: int, start_micro: int) -> Optional[dict[str, Any]]:
    """Where process `rank`'s stream continues: its checkpoint's record, or None to start at the beginning."""
    if "streams" in state:
        return state["streams"][rank]
    if start_micro:  # a checkpoint of a run that did not stream: its data position cannot be found in a stream
        raise AifError("this checkpoint records no position in a streamed dataset (it was written by a run without "
                       "--streaming, or by an older version); resume it without --streaming, or start a new run")
    return None

