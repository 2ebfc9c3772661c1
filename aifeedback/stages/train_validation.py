"""Validation images of a training run: a PNG grid of the current weights (rows = prompts, columns = seeds), drawn
without touching the training RNG, and the same images sent to the active trackers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aifeedback.dist import sharded
from aifeedback.families.base import Family
from aifeedback.families.resolve import model_defaults
from aifeedback.families.sampling import default_guidance
from aifeedback.stages.train_config import TrainConfig
from aifeedback.storage.files import atomic_write_bytes


def validation_grid(cfg: TrainConfig, accelerator, pipe, family: Family, model, vae, res: int, step: int,
                    out: Path) -> tuple[Path, list]:
    """Write a PNG grid (rows = prompts, columns = seeds) of the current weights, without touching the training RNG;
    return its path and the images (prompt-major; empty on a process that drew none). Unsharded, the main process
    alone generates with the unwrapped model; sharded, every process generates the same grid through the prepared
    model (its forwards gather the shards) and the main one saves it."""
    path = out / "validation" / f"step-{step:06d}.png"
    everywhere = sharded(accelerator)
    # A preview: half diffusers' 50 steps, unless the model has its own (SDXL Turbo: 1).
    steps = cfg.validation_steps or model_defaults(cfg.model).steps or 25
    guidance = default_guidance(pipe, cfg.model) if cfg.validation_guidance is None else cfg.validation_guidance
    images = []
    if everywhere or accelerator.is_main_process:
        setattr(pipe, family.denoiser, model if everywhere else accelerator.unwrap_model(model))
        pipe.vae = vae
        with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []), \
                torch.no_grad(), accelerator.autocast():
            for prompt in cfg.validation_prompts:
                for seed in cfg.validation_seeds:
                    g = torch.Generator(accelerator.device).manual_seed(seed)
                    images.append(pipe(prompt=prompt, num_inference_steps=steps, generator=g,
                                       **family.guidance_inputs(pipe, guidance, "", 1),
                                       **family.sampling_inputs(pipe, 1, res, res)).images[0])
        if accelerator.is_main_process:
            buf = io.BytesIO()
            _grid(images, rows=len(cfg.validation_prompts), cols=len(cfg.validation_seeds)).save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
    accelerator.wait_for_everyone()
    return path, images


def track_validation(trackers: list, cfg: TrainConfig, images: list, step: int) -> None:
    """Send one validation grid's images to the active trackers, each labelled with its prompt and seed.
    tensorboard: one image tag per cell, validation/p{prompt index}_seed{seed} (its step slider compares one prompt
    and seed across training), and a text entry validation/prompts naming each index; wandb: the images under
    "validation", captioned with prompt and seed."""
    cells = [(i, prompt, seed) for i, prompt in enumerate(cfg.validation_prompts) for seed in cfg.validation_seeds]
    for tracker in trackers:
        if tracker.name == "tensorboard":
            writer = tracker.writer
            for (i, _, seed), img in zip(cells, images, strict=True):
                writer.add_image(f"validation/p{i}_seed{seed}", np.asarray(img.convert("RGB")), step,
                                 dataformats="HWC")
            legend = "\n".join(f"- p{i}: {p}" for i, p in enumerate(cfg.validation_prompts))
            writer.add_text("validation/prompts", f"{legend}\n\nseeds: {', '.join(map(str, cfg.validation_seeds))}",
                            step)
            writer.flush()
        elif tracker.name == "wandb":
            import wandb  # optional: preflight checked it is installed when --trackers wandb

            tracker.log({"validation": [wandb.Image(img, caption=f"{prompt} (seed {seed})")
                                        for (_, prompt, seed), img in zip(cells, images, strict=True)]}, step=step)


def _grid(images: list, rows: int, cols: int):
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid
