"""`aif generate`: K candidate images per prompt from a model of any registered family, as a resumable Parquet dataset.

The work is the list of (prompt, k) pairs in prompt order, cut into shards of `shard_size` images; shard i always
holds the same images, so processes can take shards round-robin (`accelerate launch`) and a rerun after a crash
skips the shards already written. Within a shard, images are rendered in batches that span prompts. Every image's
seed is a hash of (--seed, prompt_id, k), so the output does not depend on batch size, process count or on which
other prompts are in the run.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from aifeedback.config import identity_dict, save_config, to_dict
from aifeedback.console import finish, progress, quiet_libraries
from aifeedback.data.prompts import load_prompts
from aifeedback.dist import process_state
from aifeedback.families.loading import load_pipeline
from aifeedback.families.resolve import tuned_fingerprint
from aifeedback.families.sampling import (
    default_guidance,
    default_size,
    default_steps,
    encode_image,
    image_seed,
    optimize_pipeline,
    render,
)
from aifeedback.stages.generate_config import GenerateConfig
from aifeedback.stages.sample_config import SampleConfig
from aifeedback.storage.manifest import completed_output, fingerprint, finish_output, prepare_output
from aifeedback.storage.publish import remove_stale
from aifeedback.storage.shards import (
    SHARD_DIR,
    chunks,
    latent_to_bytes,
    my_shards,
    shard_done,
    shard_files,
    write_shard,
)

ROW_FIELDS = ("prompt_id", "prompt", "category", "k", "seed", "image", "width", "height", "model", "scheduler",
              "steps", "guidance")


def row_schema(save_latents: bool):
    """The Parquet schema of generate rows (fixed, so every shard has the same types even when all are null)."""

    cols = [("prompt_id", pa.string()), ("prompt", pa.string()), ("category", pa.string()), ("k", pa.int64()),
            ("seed", pa.int64()), ("image", pa.binary()), ("width", pa.int64()), ("height", pa.int64()),
            ("model", pa.string()), ("scheduler", pa.string()), ("steps", pa.int64()), ("guidance", pa.float64())]
    if save_latents:
        cols += [("latent", pa.binary()), ("latent_shape", pa.list_(pa.int64()))]
    return pa.schema(cols)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_and_dtype(cfg: GenerateConfig | SampleConfig, state) -> tuple[str, str]:
    """This process's device (its own GPU under `accelerate launch`) and the weights dtype that `auto` resolves to."""
    device = resolve_device(cfg.device)
    if cfg.device == "auto" and state.num_processes > 1:
        device = str(state.device)
    return device, cfg.dtype if cfg.dtype != "auto" else ("float16" if device.startswith("cuda") else "float32")


def job_inputs(prompts: list, dtype: str, tuned: str | None = None) -> dict:
    """What besides the config makes a generate job: the prompt list itself (an edited prompt file must not be
    mixed into old shards), the resolved dtype, and the --tuned weights' files (retrained weights at the same path
    are a new job, not "already complete")."""

    inputs = {"prompts": fingerprint([p.prompt_id for p in prompts]), "n_prompts": len(prompts), "dtype": dtype}
    weights = tuned_fingerprint(tuned)
    return inputs if weights is None else dict(inputs, tuned_weights=weights)


def completed(cfg: GenerateConfig) -> dict | None:
    """The manifest of cfg.out when it already holds this job, finished (a rerun has nothing to do), else None."""

    prompts = load_prompts(cfg.prompts, cfg.prompt_column, cfg.split, cfg.limit, cfg.dedupe)
    inputs = job_inputs(prompts, device_and_dtype(cfg, process_state())[1], cfg.tuned)
    return completed_output(cfg.out, "generate", identity_dict(cfg), inputs)


def run(cfg: GenerateConfig) -> Path:
    """Generate cfg.images_per_prompt images per prompt into cfg.out; returns the output directory."""
    cfg.preflight()  # cheap and idempotent: STAGES[name].run checks before the import, direct callers here
    quiet_libraries()
    prompts = load_prompts(cfg.prompts, cfg.prompt_column, cfg.split, cfg.limit, cfg.dedupe)
    state = process_state()  # under `accelerate launch`: rank, world size and this rank's GPU
    device, dtype = device_and_dtype(cfg, state)
    out = Path(cfg.out)
    inputs = job_inputs(prompts, dtype, cfg.tuned)
    done = completed_output(out, "generate", identity_dict(cfg), inputs)
    if done:  # a rerun of a finished job: nothing to render, so no model to load
        if state.is_main_process:
            print(f"already complete: {out} ({done['counts']['images']} images)")
        return out
    shards = chunks([(p, k) for p in prompts for k in range(cfg.images_per_prompt)], cfg.shard_size)
    args = (out, "generate", to_dict(cfg), identity_dict(cfg), cfg.overwrite, inputs)
    if state.is_main_process:  # refuse a conflicting --out now, before the slow model load (this writes nothing)
        prepare_output(*args, is_main=False)

    pipe = load_pipeline(cfg.model, dtype, device, vae=cfg.vae, scheduler=cfg.scheduler, tuned=cfg.tuned,
                         quantization=cfg.base_quantization)
    optimize_pipeline(pipe, compile=cfg.compile, compile_mode=cfg.compile_mode)
    resolved = resolve_settings(cfg, pipe)
    manifest = start_output(cfg, out, args, state)
    render_shards(cfg, pipe, resolved, shards, out, state)
    state.wait_for_everyone()
    if state.is_main_process:
        finish_job(cfg, out, manifest, resolved, len(prompts), state.num_processes)
    state.wait_for_everyone()  # a stage run next in these processes must see the finished manifest
    return out


def resolve_settings(cfg: GenerateConfig, pipe) -> dict:
    """Size, steps, guidance and scheduler as rendered: the flags, or the model's defaults where a flag is unset."""

    width = cfg.width or cfg.resolution or default_size(pipe)
    height = cfg.height or cfg.resolution or default_size(pipe)
    steps = default_steps(pipe, cfg.model) if cfg.steps is None else cfg.steps
    guidance = default_guidance(pipe, cfg.model) if cfg.guidance is None else cfg.guidance
    return dict(width=width, height=height, steps=steps, guidance=guidance, scheduler=type(pipe.scheduler).__name__)


def start_output(cfg: GenerateConfig, out: Path, args: tuple, state) -> dict | None:
    """The main process claims cfg.out (manifest, config.yaml) and clears a killed run's temporaries; every process
    waits for it. Returns the manifest on the main process, None elsewhere."""

    manifest = None
    if state.is_main_process:
        manifest = prepare_output(*args, is_main=True)
        remove_stale(out / SHARD_DIR)  # temporaries a killed run left; never a complete shard
        save_config(cfg, out / "config.yaml")
    state.wait_for_everyone()
    return manifest


def render_shards(cfg: GenerateConfig, pipe, resolved: dict, shards: list[list], out: Path, state) -> None:
    """Render and write this process's shards that are not on disk yet."""

    todo = [i for i in my_shards(len(shards), state.process_index, state.num_processes) if not shard_done(out, i)]
    schema = row_schema(cfg.save_latents)
    bar = progress(total=sum(len(shards[i]) for i in todo), unit="img", desc="generate",
                   enabled=cfg.progress and state.is_local_main_process)
    for i in todo:
        rows = []
        for batch in chunks(shards[i], cfg.batch_size):
            rows += render_rows(cfg, pipe, resolved, batch)
            bar.update(len(batch))
        write_shard(out, i, rows, schema)
    bar.close()


def render_rows(cfg: GenerateConfig, pipe, resolved: dict, batch: list[tuple]) -> list[dict]:
    """One pipeline call for a batch of (prompt, k): its rows, images encoded (and latents, with --save-latents)."""

    seeds = [image_seed(cfg.seed, p.prompt_id, k) for p, k in batch]
    result = render(pipe, [p.text for p, _ in batch], seeds, steps=resolved["steps"], guidance=resolved["guidance"],
                    width=resolved["width"], height=resolved["height"], negative_prompt=cfg.negative_prompt,
                    return_latents=cfg.save_latents)
    rows = []
    for j, ((p, k), seed, image) in enumerate(zip(batch, seeds, result.images)):
        row = dict(prompt_id=p.prompt_id, prompt=p.text, category=p.category, k=k, seed=seed,
                   image=encode_image(image, cfg.image_format, cfg.jpeg_quality), width=image.width,
                   height=image.height, model=cfg.model, scheduler=resolved["scheduler"], steps=resolved["steps"],
                   guidance=resolved["guidance"])
        if cfg.save_latents:
            row["latent"], row["latent_shape"] = latent_to_bytes(result.latents[j])
        rows.append(row)
    return rows


def finish_job(cfg: GenerateConfig, out: Path, manifest: dict, resolved: dict, n_prompts: int, processes: int) -> None:
    """Main process, after every shard is written: the finished manifest (counts from the shards on disk)."""

    files = shard_files(out)
    manifest = dict(manifest, resolved=resolved)
    images = sum(pq.read_metadata(f).num_rows for f in files)
    finish_output(out, manifest, prompts=n_prompts, images=images,
                  shards=len(files), images_per_prompt=cfg.images_per_prompt, processes=processes)
    finish("generate", out, f"{images} images ({n_prompts} prompts x {cfg.images_per_prompt}) in "
           f"{len(files)} shard(s)", f"aif score --input {out} --out {out}-pairs --scorer pickscore")
