"""`aif sample`: look at what a trained model draws. Image files plus one grid, from a base model and tuned weights.

The images are rendered exactly as `aif generate` renders them (same seeds from --seed, prompt and k, same
sampling code), so a sample of the base model with the same flags shows the very images `aif eval` compares.
Files are OUT/train/PROMPT#_K.png (or .jpg); train/metadata.jsonl maps each `file_name` to its prompt and seed (the
`datasets` imagefolder layout: the split-named folder keeps grid.png out of `load_dataset("imagefolder",
data_dir=OUT)`, whatever the datasets version does with images a metadata file does not list). A rerun of the same job
keeps the files already written and renders only what is missing; a different job into the same folder is refused
(or, with --overwrite, replaces the old files). Processes under `accelerate launch` split the prompts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from aifeedback.config import identity_dict, save_config, to_dict
from aifeedback.console import finish, progress, quiet_libraries
from aifeedback.data.prompts import load_prompts
from aifeedback.dist import process_state
from aifeedback.evaluation.report import image_grid
from aifeedback.families.loading import load_pipeline
from aifeedback.families.sampling import encode_image, image_seed, render
from aifeedback.stages.generate import device_and_dtype
from aifeedback.stages.sample_config import SampleConfig
from aifeedback.storage.checkpoints import latest_checkpoint
from aifeedback.storage.files import atomic_write_bytes, atomic_write_text, read_json
from aifeedback.storage.manifest import MANIFEST, completed_output, fingerprint, finish_output, prepare_output
from aifeedback.storage.shards import chunks

IMAGES_DIR = "train"  # a split name: imagefolder reads only this folder, so OUT/grid.png is never a sample
METADATA = "metadata.jsonl"  # the name (and `file_name` key) datasets' imagefolder looks for


def run(cfg: SampleConfig) -> list[Path]:
    """Render the prompts into cfg.out; return the image paths (all of them, in prompt order)."""
    cfg.preflight()  # cheap and idempotent: STAGES[name].run checks before the import, direct callers here
    quiet_libraries()
    prompts = load_prompts(cfg.prompts, cfg.prompt_column, cfg.split, cfg.limit)
    state = process_state()
    out = Path(cfg.out)
    tuned = pin_tuned(cfg.tuned)
    items = image_items(cfg, prompts, tuned)
    inputs = {"prompts": fingerprint([p.prompt_id for p in prompts]), "tuned": tuned}
    paths = [out / IMAGES_DIR / it["file_name"] for it in items]
    wanted = paths + ([out / "grid.png"] if cfg.grid else [])
    if completed_output(out, "sample", identity_dict(cfg), inputs) and all(p.exists() for p in wanted):
        if state.is_main_process:  # a rerun of a finished job: nothing to render, so no model to load
            print(f"already complete: {out} ({len(paths)} images)")
        return paths
    manifest = start_output(cfg, out, inputs, items, state)
    # Each process takes every world-th prompt; files already on disk (an earlier run) are not rendered again.
    todo = [it for it in items if it["index"] % state.num_processes == state.process_index
            and not (out / IMAGES_DIR / it["file_name"]).exists()]
    if todo:
        device, dtype = device_and_dtype(cfg, state)
        pipe = load_pipeline(cfg.model, dtype, device, vae=cfg.vae, scheduler=cfg.scheduler, tuned=tuned,
                             quantization=cfg.base_quantization)
        render_files(cfg, pipe, todo, out, state)
    state.wait_for_everyone()
    if state.is_main_process:
        finish_job(cfg, out, manifest, paths, len(prompts))
    return paths


def image_items(cfg: SampleConfig, prompts: list, tuned: str | None) -> list[dict]:
    """One entry per image, in prompt order (the lines of metadata.jsonl): its file name (relative to the
    metadata file, as imagefolder wants), prompt, k, seed, and the model and tuned weights that drew it."""

    ext = "png" if cfg.image_format == "png" else "jpg"
    return [dict(file_name=f"{i:04d}_{k}.{ext}", index=i, prompt_id=p.prompt_id, prompt=p.text,
                 category=p.category, k=k, seed=image_seed(cfg.seed, p.prompt_id, k), model=cfg.model,
                 tuned=tuned)
            for i, p in enumerate(prompts) for k in range(cfg.images_per_prompt)]


def start_output(cfg: SampleConfig, out: Path, inputs: dict, items: list[dict], state) -> dict | None:
    """The main process claims cfg.out (manifest, config.yaml, train/metadata.jsonl), dropping a replaced job's images;
    every process waits for it. Returns the manifest on the main process, None elsewhere."""

    manifest = None
    if state.is_main_process:
        old = read_json(out / MANIFEST).get("fingerprint") if (out / MANIFEST).exists() else None
        manifest = prepare_output(out, "sample", to_dict(cfg), identity_dict(cfg), cfg.overwrite, inputs)
        if old is not None and old != manifest["fingerprint"]:  # --overwrite of a different job: drop its images
            for f in [*(out / IMAGES_DIR).glob("[0-9][0-9][0-9][0-9]_*.*"), out / "grid.png"]:
                f.unlink(missing_ok=True)
        save_config(cfg, out / "config.yaml")
        atomic_write_text(out / IMAGES_DIR / METADATA, "".join(json.dumps(it) + "\n" for it in items))
    state.wait_for_everyone()
    return manifest


def render_files(cfg: SampleConfig, pipe, todo: list[dict], out: Path, state) -> None:
    """Render the images of `todo` in batches, each written to its own file as soon as it is encoded."""

    bar = progress(total=len(todo), unit="img", desc="sample", enabled=cfg.progress and state.is_local_main_process)
    for batch in chunks(todo, cfg.batch_size):
        result = render(pipe, [it["prompt"] for it in batch], [it["seed"] for it in batch], steps=cfg.steps,
                        guidance=cfg.guidance, width=cfg.resolution, height=cfg.resolution,
                        negative_prompt=cfg.negative_prompt, model=cfg.model)
        for it, image in zip(batch, result.images):
            data = encode_image(image, cfg.image_format, cfg.jpeg_quality)
            atomic_write_bytes(out / IMAGES_DIR / it["file_name"], data)
        bar.update(len(batch))
    bar.close()


def finish_job(cfg: SampleConfig, out: Path, manifest: dict, paths: list[Path], n_prompts: int) -> None:
    """Main process, after every image is written: the grid (with --grid) and the finished manifest."""

    if cfg.grid:
        write_grid(paths, cfg.images_per_prompt, out / "grid.png", cfg.grid_cell)
    finish_output(out, manifest, prompts=n_prompts, images=len(paths))
    finish("sample", out, f"{len(paths)} images of {n_prompts} prompts" + (", grid.png" if cfg.grid else ""),
           f"open {out / 'grid.png'}" if cfg.grid else f"open {out}",
           *([f"aif eval --base {cfg.model} --tuned {cfg.tuned}"] if cfg.tuned else []))


def pin_tuned(tuned: str | None) -> str | None:
    """A training run dir -> its latest checkpoint folder, so a result records (and a rerun detects) which one."""

    if tuned and (Path(tuned).expanduser() / "checkpoints").is_dir():
        return str(latest_checkpoint(Path(tuned).expanduser()))
    return tuned


def write_grid(paths: list[Path], cols: int, dest: Path, cell: int = 256) -> None:
    """Tile image files into dest (PNG), `cols` per row."""

    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    buf = io.BytesIO()
    image_grid(images, cols, cell).save(buf, format="PNG")
    atomic_write_bytes(dest, buf.getvalue())
