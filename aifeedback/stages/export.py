"""`aif export`: a training checkpoint -> files the diffusers ecosystem loads directly (safetensors only).

- full fine-tune -> OUT/unet/ or OUT/transformer/, the denoiser under its pipeline component's name
  (`UNet2DConditionModel.from_pretrained(OUT, subfolder="unet")`, `SD3Transformer2DModel...(subfolder="transformer")`),
  or with --pipeline a whole pipeline folder (`DiffusionPipeline.from_pretrained(OUT)`);
- LoRA -> OUT/pytorch_lora_weights.safetensors (`pipe.load_lora_weights(OUT)`), or with --pipeline a pipeline
  folder with the LoRA fused into the denoiser.
- `--format kohya`: the LoRA file in the kohya key format (ComfyUI, A1111).
- a run trained with --ema-decay: the moving average (CHECKPOINT/ema/, same layout) is the exported model, unless
  --no-ema.
Every export gets a model card, OUT/README.md (plus OUT/sample_grid.png, the run's last validation grid); --eval
puts an `aif eval` output's win rates in it; --push-to-hub uploads the finished folder (aifeedback.sharing).
The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aifeedback.console import finish, quiet_libraries
from aifeedback.families.loading import apply_lora, load_denoiser, load_pipeline, torch_dtype
from aifeedback.sharing.cards import write_model_card
from aifeedback.sharing.hub import push_folder
from aifeedback.sharing.kohya import to_kohya
from aifeedback.stages.export_config import ExportConfig
from aifeedback.storage.checkpoints import (
    LORA_FILE,
    checkpoint_kind,
    denoiser_dir,
    resolve_checkpoint,
    sort_headers,
)
from aifeedback.storage.publish import publishing


def run(cfg: ExportConfig) -> Path:
    """Export; returns the output folder."""
    cfg.preflight()

    quiet_libraries()
    ckpt = resolve_checkpoint(cfg.checkpoint)
    weights = cfg.weights(ckpt)  # ckpt, or its ema/ folder
    kind = checkpoint_kind(weights)
    out = Path(cfg.out)
    dtype = torch_dtype(cfg.dtype)
    with publishing(out, folder=True, replace=True) as tmp:  # replaces an empty --out, or any with --overwrite
        if cfg.pipeline:
            pipe = _base_pipeline(cfg, ckpt)
            if kind == "lora":
                apply_lora(pipe, weights / LORA_FILE, f"checkpoint {weights}")
                pipe.fuse_lora()
                pipe.unload_lora_weights()
            else:
                setattr(pipe, *load_denoiser(str(denoiser_dir(weights))))
            pipe.to(dtype=dtype).save_pretrained(tmp, safe_serialization=True)
        elif kind == "lora":
            _export_lora(weights, tmp, dtype, cfg.format)
        else:
            component, model = load_denoiser(str(denoiser_dir(weights)), dtype)
            model.save_pretrained(tmp / component, safe_serialization=True)
        sort_headers(tmp)  # safetensors writes its metadata in a per-process random order: make reruns byte-equal
        # inside the publish: the card comes with the weights
        write_model_card(tmp, ckpt, kind, "pipeline" if cfg.pipeline else cfg.format, cfg.eval)
    if cfg.push_to_hub:
        print(f"uploaded to {push_folder(out, cfg.push_to_hub, 'model', private=not cfg.hub_public)}")
    what = "pipeline" if cfg.pipeline else ("LoRA" if kind == "lora" else denoiser_dir(ckpt).name)
    model = cfg.model or _recorded_model(ckpt) or "BASE_MODEL"
    base = str(out) if cfg.pipeline else model
    tuned = "" if cfg.pipeline else f" --tuned {out}"
    finish("export", out, f"{what} ({cfg.dtype}) from {weights}", f"aif sample --model {base}{tuned}",
           f"aif eval --base {model} --tuned {out}")
    return out


def _export_lora(ckpt: Path, tmp: Path, dtype, fmt: str) -> None:
    tensors = {k: v.to(dtype).contiguous() for k, v in load_file(str(ckpt / LORA_FILE)).items()}
    with safe_open(str(ckpt / LORA_FILE), "pt") as f:
        metadata = f.metadata()  # keeps the adapter config (rank, alpha) that load_lora_weights reads
    if fmt == "kohya":  # the alphas now carry the scale; diffusers' adapter metadata would not match kohya keys
        tensors, metadata = to_kohya(tensors, metadata), None
    save_file(tensors, str(tmp / LORA_FILE), metadata=metadata)


def _base_pipeline(cfg: ExportConfig, ckpt: Path):

    return load_pipeline(cfg.base_model(ckpt), "float32", "cpu")


def _recorded_model(ckpt: Path) -> str | None:
    """The base model in the training run's config.yaml (RUN/checkpoints/checkpoint-N -> RUN), if there is one."""

    run_config = ckpt.parent.parent / "config.yaml"
    return yaml.safe_load(run_config.read_text()).get("model") if run_config.exists() else None
