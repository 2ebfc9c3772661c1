"""`aif train`: Diffusion-DPO (or SFT) of an SDXL / SD1.5 UNet on human or AI-labelled preference pairs.

One training loop, written out top to bottom in `run` (torchtune style): every feature is an option of this loop.
accelerate provides mixed precision, gradient accumulation and multi-process DDP (`accelerate launch -m aifeedback
train ...`); peft provides LoRA. The reference model is the same UNet with its adapters disabled (LoRA) or a
frozen copy in the compute dtype (full fine-tune), run in the same train/eval mode as the policy, so with one shared
noise and timestep per pair the first loss is exactly ln 2.

Run folder: config.yaml, manifest.json, metrics.jsonl (one line per optimizer step), logs/ (tensorboard),
validation/step-NNNNNN.png, checkpoints/checkpoint-NNNNNN/ (see checkpoints.py). A run killed at any moment and
restarted with the same command continues from its latest checkpoint and ends with the same weights.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from aifeedback.config import identity_dict, save_config, to_dict
from aifeedback.errors import AifError
from aifeedback.stages.train_config import TrainConfig


def run(cfg: TrainConfig) -> Path:
    """Train; returns the run folder."""
    cfg.preflight()
    import copy
    from collections import defaultdict

    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
    from diffusers import UNet2DConditionModel
    from tqdm.auto import tqdm

    from aifeedback.console import finish, note, progress, quiet_libraries
    from aifeedback.data import pairs as D
    from aifeedback.dist import process_state
    from aifeedback.families.diffusion import (
        TextEncoders,
        encode_images,
        noise_scheduler,
        training_target,
        vae_factor,
    )
    from aifeedback.families.loading import family, load_pipeline
    from aifeedback.losses import get_loss
    from aifeedback.losses.base import denoising_mse
    from aifeedback.storage import checkpoints as ck
    from aifeedback.storage.files import read_json, write_json
    from aifeedback.storage.manifest import finish_output, prepare_output
    from aifeedback.storage.publish import discard, publish, temporary_path

    quiet_libraries()
    out = Path(cfg.out)
    done = _finished_step(cfg, out)
    if done is not None:  # a rerun of a finished run: nothing to train, so no model to load
        if process_state().is_main_process:
            print(f"already complete: {out} (step {done} of --max-steps {cfg.max_steps}; raise it to train on)")
        return out
    # accelerate keeps its mixed-precision state in a process-wide singleton; forget a previous in-process run's
    # (the distributed environment itself, PartialState, is kept).
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
        # On a host without a GPU, processes started by `accelerate launch --multi_gpu` / torchrun join as CPU (gloo).
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        log_with=None if cfg.trackers == "none" else cfg.trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    rank, world, main, device = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process, accelerator.device
    say = note if main else (lambda msg: None)

    # ---- 1. Run folder: continue a checkpoint or start fresh --------------------------------------------------
    resume_from = _resume_point(cfg, out)
    if main:
        if resume_from is None and cfg.overwrite:
            for name in ("checkpoints", "logs", "validation", "metrics.jsonl", "manifest.json"):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        prepare_output(out, "train", to_dict(cfg), identity_dict(cfg), overwrite=cfg.overwrite,
                                  inputs=_input_fingerprint(cfg))
        save_config(cfg, out / "config.yaml")
    accelerator.wait_for_everyone()
    set_seed(cfg.seed, device_specific=True)  # noise/timesteps differ per process; checkpoints save each RNG

    # ---- 2. Models ------------------------------------------------------------------------------------------
    pipe = load_pipeline(cfg.model, "float32", "cpu", vae=cfg.vae)
    fam = family(pipe)
    res = cfg.resolution or (1024 if fam == "sdxl" else 512)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[accelerator.mixed_precision]
    text = TextEncoders.from_pipeline(pipe).to(device, weight_dtype)
    # The stock SDXL VAE overflows in fp16: keep it in fp32 unless a fixed VAE was given.
    vae_dtype = torch.float32 if (fam == "sdxl" and weight_dtype == torch.float16 and not cfg.vae) else weight_dtype
    vae = pipe.vae.to(device, vae_dtype).requires_grad_(False).eval()
    scheduler = noise_scheduler(pipe)
    loss_fn, needs_ref = get_loss(cfg.loss)
    unet = pipe.unet
    lora = cfg.lora_rank > 0
    ref = None
    if lora:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        unet.requires_grad_(False).to(device, weight_dtype)
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        cast_training_params(unet, dtype=torch.float32)  # trainable LoRA weights in fp32, frozen base in weight_dtype
    else:
        unet.to(device)  # fp32 master weights; autocast runs the forward in the compute dtype
        if needs_ref:
            if weight_dtype != torch.float32:
                # Start the policy from exactly the weights the compute-dtype reference holds: layers autocast keeps
                # in fp32 (norms) would otherwise differ by the rounding, beta amplifies it, and the first loss
                # would not be ln 2.
                with torch.no_grad():
                    for p in unet.parameters():
                        p.copy_(p.to(weight_dtype).float())
            ref = copy.deepcopy(unet).requires_grad_(False).to(weight_dtype)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    if ref is not None:
        ref.train()  # same mode as the policy: identical outputs at step 0, so the first loss is exactly ln 2
    params = [p for p in unet.parameters() if p.requires_grad]

    pairs_per_step = cfg.batch_size * cfg.grad_accum * world
    lr = cfg.lr * pairs_per_step if cfg.scale_lr else cfg.lr
    optimizer = _optimizer(cfg, params, lr)
    from diffusers.optimization import get_scheduler

    lr_sched = get_scheduler("constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule, optimizer,
                             num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_sched)  # not prepare(): that would step it once per process

    # Checkpoints hold the model in the diffusers format (unet/ or the LoRA file) instead of accelerate's own copy.
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def drop_default_weights(models, weights, output_dir):
        if not sharded:
            weights.clear()

    def load_diffusers_weights(models, input_dir):
        if sharded:
            return
        while models:
            m = accelerator.unwrap_model(models.pop())
            if lora:
                ck.load_lora_into(m, Path(input_dir) / ck.LORA_FILE)
            else:
                m.load_state_dict(UNet2DConditionModel.from_pretrained(input_dir, subfolder="unet").state_dict())

    accelerator.register_save_state_pre_hook(drop_default_weights)
    accelerator.register_load_state_pre_hook(load_diffusers_weights)

    # ---- 3. Data --------------------------------------------------------------------------------------------
    table = D.open_table(cfg.data, cfg.dataset, cfg.split, cfg.streaming)
    latent_shape = None
    transform = D.Transform(res, cfg.random_crop, cfg.flip, cfg.caption_dropout)
    if cfg.streaming:
        stats = D.PairStats()
        n_pairs = None
    else:
        pairs, stats = D.filter_labels(table, cfg.max_pairs)
        say(stats.summary(cfg.dataset))
        if not pairs:
            raise D.no_pairs_error(cfg.dataset, stats)
        f = vae_factor(vae.config)
        latent_shape, why = D.stored_latent_shape(table, pairs, (unet_config(unet, accelerator).in_channels, res // f, res // f),
                                                  D.latent_source(cfg.dataset), {"model": cfg.model, "vae": cfg.vae})
        if any(c in table.column_names for c in D.LATENT_COLUMNS):
            say(why)
        transform.latent_shape = latent_shape
        dataset = D.PairDataset(table, pairs, transform, cfg.seed, window=cfg.batch_size * world)
        n_pairs = len(pairs)

    # ---- 4. Resume ------------------------------------------------------------------------------------------
    state = {"step": 0, "bad_images": 0}
    if resume_from is not None:
        state = read_json(resume_from / ck.STATE_FILE)
        if state.get("processes", world) != world:  # data order and per-process RNG states depend on it
            raise AifError(f"{resume_from} was written by a run with {state['processes']} processes; resume it with "
                           f"the same number (this one has {world}), or start a new run with another --out.")
        accelerator.load_state(str(resume_from))
        say(f"resuming from {resume_from} (step {state['step']})")
    step = state["step"]
    metrics_path = out / "metrics.jsonl"
    if main:
        _truncate_metrics(metrics_path, step)
    start_micro = step * cfg.grad_accum  # global micro-batches already consumed: the data position
    if cfg.streaming:
        batches = D.stream_batches(table, transform, cfg.batch_size, rank, world, start_micro, cfg.seed,
                                   cfg.shuffle_buffer, stats)
    else:
        batches = D.batches(dataset, cfg.batch_size, rank, world, start_micro, cfg.num_workers, cfg.seed)
    if cfg.trackers != "none":
        accelerator.init_trackers("aif-train", config={k: v for k, v in to_dict(cfg).items() if isinstance(v, (int, float, str, bool))})

    def save_checkpoint(step: int) -> None:
        final = out / "checkpoints" / ck.checkpoint_name(step)
        tmp = temporary_path(final)
        if main:
            discard(tmp)  # a killed save's leftover
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # optimizer, lr schedule, grad scaler, every process's RNG
        sd = accelerator.get_state_dict(unet)  # collective: gathers FSDP / ZeRO shards
        if main:
            model = accelerator.unwrap_model(unet)
            if lora:
                ck.save_lora(model, tmp, fam, state_dict=sd)
            else:
                model.save_pretrained(tmp / "unet", state_dict=sd, safe_serialization=True)
            write_json(tmp / ck.STATE_FILE, dict(state, step=step, processes=world,
                                                 data_position=step * cfg.grad_accum * cfg.batch_size * world))
            publish(tmp, final, replace=True)  # atomic: --resume only ever sees complete checkpoints
            ck.prune(out, cfg.keep_checkpoints)
            say(f"step {step}: wrote checkpoint {final}")
        accelerator.wait_for_everyone()

    # ---- 5. The loop ----------------------------------------------------------------------------------------
    say(f"training {fam} {'LoRA r=' + str(cfg.lora_rank) if lora else 'full UNet'} with {cfg.loss} on "
        f"{n_pairs if n_pairs is not None else 'streamed'} pairs: {pairs_per_step} pairs/step, lr {lr:g}, beta {cfg.beta:g}, "
        f"{res}px, {world} process(es)")
    bar = progress(total=cfg.max_steps, initial=step, desc="train", unit="step", enabled=cfg.progress and main)
    T = scheduler.config.num_train_timesteps
    while step < cfg.max_steps:
        t_start = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        grad_norm = torch.zeros((), device=device)
        bad = 0  # this process's unreadable pairs in this step; summed over processes below
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            for row, why in batch["skipped"]:
                bad += 1
                tqdm.write(f"{'' if world == 1 else f'[process {rank}] '}warning: skipped unreadable pair at row "
                           f"{row} of {cfg.dataset}: {why}", file=sys.stderr)
            B = len(batch["captions"])
            with torch.no_grad():
                if "latents" in batch:  # stored latents: already in UNet space
                    latents = torch.cat([batch["latents"][:, 0], batch["latents"][:, 1]]).to(device)
                else:
                    latents = encode_images(vae, torch.cat([batch["pixels"][:, 0], batch["pixels"][:, 1]]).to(device))
                embeds, pooled = text.encode(batch["captions"])
                embeds = embeds.repeat(2, 1, 1)  # rows: B winners, then B losers
                cond = {}
                if fam == "sdxl":
                    ids = torch.cat([batch["time_ids"][:, 0], batch["time_ids"][:, 1]])
                    cond = {"added_cond_kwargs": {"text_embeds": pooled.repeat(2, 1), "time_ids": ids.to(device, embeds.dtype)}}
                noise = torch.randn_like(latents[:B]).repeat(2, 1, 1, 1)  # one noise and timestep per pair
                t = torch.randint(0, T, (B,), device=device).repeat(2)
                noisy = scheduler.add_noise(latents, noise, t)
                target = training_target(scheduler, latents, noise, t)
            with accelerator.accumulate(unet):
                with accelerator.autocast():
                    mse = denoising_mse(unet(noisy, t, embeds, **cond).sample, target)
                    ref_w = ref_l = None
                    if needs_ref:
                        with torch.no_grad():
                            if lora:  # the reference is the same network with its adapters switched off
                                base = accelerator.unwrap_model(unet)
                                base.disable_adapters()
                                try:
                                    ref_w, ref_l = denoising_mse(base(noisy, t, embeds, **cond).sample, target).chunk(2)
                                finally:
                                    base.enable_adapters()
                            else:
                                ref_w, ref_l = denoising_mse(ref(noisy, t, embeds, **cond).sample, target).chunk(2)
                    model_w, model_l = mse.chunk(2)
                    loss, metrics = loss_fn(model_w, model_l, ref_w, ref_l, cfg.beta)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums["loss"] += loss.detach().item() / cfg.grad_accum
            for k, v in metrics.items():
                sums[k] += v.item() / cfg.grad_accum
        lr_sched.step()
        step += 1

        # Metrics: the mean over micro-steps and processes; unreadable pairs: the sum. One collective for both.
        keys = sorted(sums)
        totals = accelerator.reduce(torch.tensor([sums[k] for k in keys] + [bad], device=device), reduction="sum")
        avg = (totals[:-1] / world).tolist()
        state["bad_images"] += int(totals[-1])
        record = {"step": step, **{k: round(v, 8) for k, v in zip(keys, avg)},
                  "grad_norm": float(grad_norm) if grad_norm is not None else None, "lr": lr_sched.get_last_lr()[0],
                  "pairs_per_s": round(pairs_per_step / (time.perf_counter() - t_start), 3),
                  "epoch": round(step * pairs_per_step / n_pairs, 4) if n_pairs else None,
                  "bad_images": state["bad_images"]}
        if main:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record.get('implicit_acc', float('nan')):.2f}",
                            pairs_s=f"{record['pairs_per_s']:.1f}")
            bar.update(1)
        if cfg.trackers != "none":
            accelerator.log({f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
        if cfg.validation_every and step % cfg.validation_every == 0:
            grid = _validate(cfg, accelerator, pipe, unet, text, vae, res, step, out)
            say(f"step {step}: wrote validation grid {grid}")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            save_checkpoint(step)
    bar.close()

    if main:
        finish_output(out, read_json(out / "manifest.json"), steps=step, pairs=stats.kept, rows=stats.rows,
                      ties_dropped=stats.ties, bad_labels=stats.bad_labels, bad_images=state["bad_images"],
                      processes=world)
        finish("train", out, f"{step} {cfg.loss} steps on {n_pairs if n_pairs is not None else 'streamed'} pairs, "
               f"checkpoints in {out / 'checkpoints'}", f"aif eval --base {cfg.model} --tuned {out}",
               f"aif sample --model {cfg.model} --tuned {out}", f"aif export {out} --out {out}-export")
    # Close the trackers but keep the process group (end_training() would destroy it), so a stage run next in
    # these processes (eval after train in `aif demo`, a notebook) still works.
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()
    return out


def unet_config(unet, accelerator):
    """The UNet's diffusers config through any wrapper (DDP, FSDP)."""
    return accelerator.unwrap_model(unet).config


def _optimizer(cfg: TrainConfig, params: list, lr: float):
    import torch

    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise AifError("--optimizer adamw8bit needs bitsandbytes (CUDA): pip install 'aifeedback[bnb]'") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=cfg.weight_decay)
    from transformers.optimization import Adafactor

    # As the Diffusion-DPO SDXL runs: a fixed lr, no relative steps or parameter scaling.
    return Adafactor(params, lr=lr, weight_decay=cfg.weight_decay, scale_parameter=False, relative_step=False,
                     warmup_init=False, clip_threshold=1.0)


def _resume_point(cfg: TrainConfig, out: Path) -> Optional[Path]:
    """The checkpoint to continue from, or None to start fresh (see the --resume help)."""
    from aifeedback.storage.checkpoints import list_checkpoints, resolve_checkpoint

    existing = list_checkpoints(out)
    if cfg.resume == "auto":
        if existing and not _same_job(cfg, out):
            if cfg.overwrite:
                return None
            raise AifError(f"{out} holds checkpoints of a different training job. Use another --out, or pass --overwrite "
                           "to delete them and start over")
        return existing[-1] if existing else None
    if cfg.resume == "latest":
        if not existing:
            raise AifError(f"--resume latest: {out} has no complete checkpoint (checkpoints/checkpoint-NNNNNN). "
                           "Use --resume auto to start fresh when there is none")
        return existing[-1]
    if cfg.resume == "none":
        if existing and not cfg.overwrite:
            raise AifError(f"--resume none: {out} already holds checkpoints; pass --overwrite to delete them and start "
                           "over, or use another --out")
        return None
    return resolve_checkpoint(cfg.resume)


def _finished_step(cfg: TrainConfig, out: Path) -> Optional[int]:
    """The step of --out's latest checkpoint when this very run already reached --max-steps and finished, else None
    (a run resumed with a higher --max-steps trains on)."""
    from aifeedback.storage.checkpoints import STATE_FILE, list_checkpoints
    from aifeedback.storage.files import read_json
    from aifeedback.storage.manifest import completed_output

    if cfg.resume not in ("auto", "latest") or not completed_output(out, "train", identity_dict(cfg),
                                                                     _input_fingerprint(cfg)):
        return None
    ckpts = list_checkpoints(out)
    step = read_json(ckpts[-1] / STATE_FILE)["step"] if ckpts else -1
    return step if step >= cfg.max_steps else None


def _same_job(cfg: TrainConfig, out: Path) -> bool:
    from aifeedback.storage.files import read_json
    from aifeedback.storage.manifest import fingerprint

    try:
        old = read_json(out / "manifest.json")
    except (OSError, ValueError):
        return False
    key = fingerprint({"stage": "train", "identity": identity_dict(cfg), "inputs": _input_fingerprint(cfg)})
    return old.get("fingerprint") == key


def _input_fingerprint(cfg: TrainConfig) -> dict:
    manifest = Path(cfg.dataset) / "manifest.json"
    if manifest.exists():
        return {"dataset_fingerprint": json.loads(manifest.read_text()).get("fingerprint")}
    return {}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (a killed run may have logged steps it never checkpointed)."""
    from aifeedback.storage.files import atomic_write_text

    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["step"] <= step:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write: it was never checkpointed
            continue
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _validate(cfg: TrainConfig, accelerator, pipe, unet, text, vae, res: int, step: int, out: Path) -> Path:
    """Write a PNG grid (rows = prompts, columns = seeds) of the current weights, without touching the training RNG;
    return its path."""
    import torch

    from aifeedback.storage.files import atomic_write_bytes

    if accelerator.is_main_process:
        pipe.unet = accelerator.unwrap_model(unet)
        pipe.vae = vae
        images = []
        with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []), \
                torch.no_grad(), accelerator.autocast():
            for prompt in cfg.validation_prompts:
                for seed in cfg.validation_seeds:
                    g = torch.Generator(accelerator.device).manual_seed(seed)
                    images.append(pipe(prompt, height=res, width=res, num_inference_steps=cfg.validation_steps,
                                       guidance_scale=cfg.validation_guidance, generator=g).images[0])
        grid = _grid(images, rows=len(cfg.validation_prompts), cols=len(cfg.validation_seeds))
        import io

        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        atomic_write_bytes(out / "validation" / f"step-{step:06d}.png", buf.getvalue())
    accelerator.wait_for_everyone()
    return out / "validation" / f"step-{step:06d}.png"


def _grid(images: list, rows: int, cols: int):
    from PIL import Image

    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid
