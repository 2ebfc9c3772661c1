"""Loading diffusion pipelines by name (tiny zoo, toy world, hub id or local path) and fine-tuned weights.

Every stage loads models through `load_pipeline`, so a tiny offline model and
`stabilityai/stable-diffusion-xl-base-1.0` take the same code path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, AutoModel, DiffusionPipeline
from safetensors import safe_open

from aifeedback.console import quiet_libraries
from aifeedback.families import detect
from aifeedback.families.quantize import pipeline_quantization
from aifeedback.families.resolve import (
    DTYPES,
    FIT_KEYS,
    SCHEDULERS,
    TunedLoadError,
    check_pipeline,
    load_error,
    resolve_model,
    vae_class_error,
)
from aifeedback.storage.checkpoints import DENOISER_DIRS, check_weights_file


def torch_dtype(name: str):
    """'float32' | 'float16' | 'bfloat16' (also fp32/fp16/bf16) -> torch dtype."""

    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "no": "float32"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}'; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_pipeline(name: str, dtype: str = "float32", device: str = "cpu", vae: str | None = None,
                  scheduler: str = "default", tuned: str | None = None, quantization: str = "none") -> Any:
    """A diffusers text-to-image pipeline (of a registered family) by tiny name, hub id or local path.

    `tuned` swaps in fine-tuned weights (see `resolve_tuned`): a LoRA file or folder, a denoiser (UNet or
    transformer) folder, a pipeline folder with unet/ or transformer/, or a training run directory (its latest
    checkpoint). `quantization` (nf4, int8, fp8; see `families/quantize.py`) loads the denoiser and the text
    encoders quantized, for a LoRA trained on top.
    """
    kind, where = check_pipeline(name, vae, tuned)

    quiet_libraries()  # again now that diffusers is imported: its loading bars have no environment switch
    td = torch_dtype(dtype)
    path = resolve_model(name)
    kwargs: dict[str, Any] = {"dtype": td}
    if vae:
        kwargs["vae"] = load_vae(vae, name, path, td)
    if quantization != "none":
        kwargs["quantization_config"] = pipeline_quantization(quantization, _quantized_parts(name, path), td)
    if kind == "unet":  # load the tuned denoiser instead of (not after) the base one: SDXL's UNet is 5 GB in fp16
        component, kwargs[component] = load_denoiser(where, td)
    try:
        pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise load_error(name, "model", e) from None
    detect(pipe)  # refuse unsupported pipelines early
    if kind == "unet":
        _check_tuned_fits(pipe, path, tuned, component)
    elif kind == "lora":
        apply_lora(pipe, where, f"--tuned {tuned}")
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # scoring and training need the raw images
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_vae(vae: str, name: str, path: str, td: Any) -> Any:
    """The --vae override, of the VAE class the base model's pipeline holds (AutoencoderKL, AutoencoderKLFlux2,
    AutoencoderKLQwenImage, ...); a VAE of another class is refused before the pipeline loads."""
    try:
        expected = DiffusionPipeline.load_config(path).get("vae", [None, "AutoencoderKL"])[1]
        found = AutoencoderKL.load_config(resolve_model(vae)).get("_class_name")
    except (OSError, ValueError, EnvironmentError) as e:
        raise load_error(vae, "VAE", e) from None
    if found != expected:
        raise vae_class_error(vae, found, name, expected)
    try:
        return getattr(diffusers, expected).from_pretrained(resolve_model(vae), dtype=td)
    except (OSError, ValueError, EnvironmentError, AttributeError) as e:
        raise load_error(vae, "VAE", e) from None


def _quantized_parts(name: str, path: str) -> list[str]:
    """The components a quantized base quantizes: the denoiser and the text encoders its model_index.json lists."""
    try:
        index = DiffusionPipeline.load_config(path)
    except (OSError, ValueError, EnvironmentError) as e:
        raise load_error(name, "model", e) from None
    return [c for c in index if c in DENOISER_DIRS or c.startswith("text_encoder")]


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's sampler by short name, keeping its noise schedule ('default' keeps the model's own)."""

    classes = {
        "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler",
        "euler_a": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
        "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
    }
    if name == "default":
        return
    if "FlowMatch" in type(pipe.scheduler).__name__:
        raise ValueError(f"--scheduler {name} is a sampler for DDPM-style models; a flow-matching model (sd3, flux) "
                         "samples with its own flow-matching scheduler: pass --scheduler default")
    if name not in classes:
        raise ValueError(f"unknown scheduler '{name}'; use one of {', '.join(SCHEDULERS)}")
    pipe.scheduler = getattr(diffusers, classes[name]).from_config(pipe.scheduler.config)


def load_denoiser(where: str, td: Any = None) -> tuple[str, Any]:
    """(pipeline component, model) of denoiser weights: a local UNet or transformer folder, or a hub repo with unet/
    or transformer/. The model class is the one its config names; the component is its family's denoiser."""
    error: Exception = OSError("no unet/ or transformer/ folder")
    for weights in Path(where).rglob("*.safetensors") if Path(where).is_dir() else ():
        check_weights_file(weights)  # a damaged file: named, not "could not be loaded" with download advice
    for sub in [None] if Path(where).exists() else DENOISER_DIRS:
        try:
            model = AutoModel.from_pretrained(where, subfolder=sub, dtype=td)  # the class its config names
        except (OSError, ValueError, EnvironmentError, KeyError, AttributeError) as e:
            error = e
            continue
        return detect(model).denoiser, model
    raise load_error(where, "tuned denoiser", error) from None


def _check_tuned_fits(pipe: Any, base: str, tuned: str, component: str) -> None:
    """A tuned denoiser must come from the same family and size as the base (SDXL vs SD1.5 mix-ups are common)."""

    if getattr(pipe, component, None) is None:  # diffusers drops a component the pipeline does not have, silently
        raise TunedLoadError(f"--tuned {tuned} holds a {component}, but base model {base} has none (its denoiser is "
                             f"the {detect(pipe).denoiser}). Fix: pass the base model it was trained from (--model).")
    try:
        base_cfg = AutoModel.load_config(base, subfolder=component)
    except (OSError, ValueError, EnvironmentError):
        return  # a base without a separate denoiser config: nothing to compare against
    for key in FIT_KEYS[component]:
        a, b = base_cfg.get(key), getattr(pipe, component).config.get(key)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            raise TunedLoadError(f"--tuned {tuned} does not fit base model {base}: {component} {key} is {b}, the "
                                 f"base has {a}. Fix: pass the base model the {component} was trained from (--model).")


def apply_lora(pipe: Any, file: str | Path, what: str) -> None:
    """Load a LoRA file into the pipeline, refusing one that does not fit it: a load error, a LoRA whose layers
    match no module of the pipeline (diffusers skips keys of another denoiser silently), or one that matches only
    some of the layers it holds (a model of another architecture)."""
    path = Path(file)
    check_weights_file(path)  # a damaged file: one line naming it, not a safetensors traceback
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise TunedLoadError(f"{what}: could not apply LoRA {file} to this model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}). Fix: pass the base model it was trained "
                             f"on (--model).") from None
    denoiser = detect(pipe).denoiser
    applied = sum(_lora_layers(getattr(pipe, name, None)) for name in (denoiser, "text_encoder", "text_encoder_2"))
    held = _file_layers(path, denoiser)
    if applied == 0 or applied < len(held):
        with safe_open(str(path), "pt") as f:
            example = next(iter(f.keys()), "none")
        found = f"none of its layers (e.g. {example})" if applied == 0 else f"{applied} of its {len(held)} layers"
        raise TunedLoadError(f"{what}: LoRA {file} does not fit this model: {found} match a module of its "
                             f"{denoiser}. Fix: pass the base model it was trained on (--model), or a LoRA trained "
                             f"for this model.")


def _lora_layers(model: Any) -> int:
    """How many modules of a model carry a LoRA adapter (peft layers have lora_A)."""
    if model is None or not hasattr(model, "modules"):
        return 0
    return sum(1 for m in model.modules() if len(getattr(m, "lora_A", ())) > 0)


def _file_layers(path: Path, denoiser: str) -> set[str]:
    """The LoRA layers a diffusers-format file holds for the denoiser and the text encoders, by module name (empty
    for another key format, e.g. kohya's, whose layers diffusers renames while loading)."""
    prefixes = (f"{denoiser}.", "text_encoder.", "text_encoder_2.")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    return {re.split(r"\.lora[._]", k)[0] for k in keys if k.startswith(prefixes) and re.search(r"\.lora[._]", k)}
