"""Rendering prompts with per-image seeds: the one sampling path shared by `aif generate`, `aif sample` and `aif eval`.

Each image gets its own `torch.Generator` (on the CPU, so the starting noise is the same on every device), and
diffusers draws every image's noise from its own generator. An image therefore depends only on its prompt and
seed, not on the batch it was rendered in, the other prompts, or the number of processes (up to floating-point
noise of batched kernels). The pipeline stops at the latent, and `decode_latents` decodes it the way the
diffusers pipelines do, so one pass gives both the image and the latent training can reuse.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import torch

from aifeedback.families import detect
from aifeedback.families.resolve import model_defaults


def image_seed(seed: int, prompt_id: str, k: int) -> int:
    """Seed of candidate k of a prompt: a hash of (run seed, prompt_id, k), in [0, 2**63)."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def default_size(pipe: Any) -> int:
    """The model's native resolution in pixels (1024 for SDXL base and SD3, 512 for SD1.5, 32 for the tiny models):
    the denoiser's sample size in latent pixels, else the pipeline's default (a transformer without one, FLUX)."""
    fam = detect(pipe)
    size = getattr(getattr(pipe, fam.denoiser).config, "sample_size", None)
    size = size or getattr(pipe, "default_sample_size", None)
    if size is None:  # ZImagePipeline has neither: it draws `height or 1024` px, the family's size at the real 8x VAE
        size = fam.resolution // 8
    return int(size * pipe.vae_scale_factor)


def default_guidance(pipe: Any, model: str = "") -> float:
    """The classifier-free guidance scale `model` samples with by default: its own (SDXL Turbo 0.0, see
    resolve.MODEL_DEFAULTS), else diffusers' default for the pipeline's family (SDXL 5.0, SD1.5 7.5)."""
    own = model_defaults(model).guidance
    return detect(pipe).guidance if own is None else own


def default_steps(pipe: Any, model: str = "") -> int:
    """The number of sampling steps `model` takes by default: its own (SDXL Turbo 1), else its family's (50)."""
    return model_defaults(model).steps or detect(pipe).steps


@dataclass
class Rendered:
    """Images (PIL) and, when asked for, latents (N, C, h, w) in the denoiser's space (normalised as the VAE
    declares: what training's encode_images gives), on CPU."""

    images: list
    latents: Any = None


def render(pipe: Any, prompts: list[str], seeds: list[int], *, steps: int | None = None,
           guidance: float | None = None, width: int | None = None, height: int | None = None,
           negative_prompt: str = "", return_latents: bool = False, model: str = "") -> Rendered:
    """Render prompts[i] with seeds[i] in one batch; returns PIL images (and latents if return_latents).

    `pipe` is a diffusers pipeline of a registered family (e.g. from `loading.load_pipeline`). steps/guidance
    default to those of `model` (the name it was loaded by, see default_steps), width/height to the model's native
    size. An empty negative prompt keeps each pipeline's own default (SDXL uses zero embeddings for it).
    """

    if len(prompts) != len(seeds):
        raise ValueError(f"render: {len(prompts)} prompts but {len(seeds)} seeds")
    size = default_size(pipe)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    with torch.inference_mode():
        latents = pipe(
            prompt=list(prompts),
            num_inference_steps=default_steps(pipe, model) if steps is None else steps,
            generator=generators,
            output_type="latent",
            **detect(pipe).guidance_inputs(pipe, default_guidance(pipe, model) if guidance is None else guidance,
                                           negative_prompt, len(prompts)),
            **detect(pipe).sampling_inputs(pipe, len(prompts), width or size, height or size),
        ).images
        latents = detect(pipe).pipeline_latents(pipe, latents, height or size, width or size)
        images = decode_latents(pipe, latents)
    return Rendered(images, latents.float().cpu() if return_latents else None)


def decode_latents(pipe: Any, latents: Any) -> list:
    """Denoiser-space latents -> PIL images, as the family's diffusers pipeline decodes them.

    A float16 VAE whose config says `force_upcast` (the stock SDXL VAE overflows in fp16) is moved to float32
    once and kept there; an fp16-safe VAE (e.g. madebyollin/sdxl-vae-fp16-fix) decodes in float16.
    """

    vae = pipe.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
    with torch.inference_mode():
        x = detect(pipe).decode_images(vae, latents)
    if getattr(pipe, "watermark", None) is not None:  # SDXL adds its invisible watermark when the package exists
        x = pipe.watermark.apply_watermark(x)
    return pipe.image_processor.postprocess(x, output_type="pil")


def encode_image(image: Any, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """A PIL image -> JPEG or PNG bytes (what Parquet rows and Pick-a-Pic's jpg_0/jpg_1 columns hold)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        image.save(buf, format="PNG", compress_level=1)  # fast; the images are intermediate data
    else:
        raise ValueError(f"unknown image format '{fmt}'; use jpeg or png")
    return buf.getvalue()




def optimize_pipeline(pipe: Any, channels_last: bool = False, compile: bool = False,
                      compile_mode: str = "max-autotune") -> Any:
    """Speed options for long GPU runs: channels_last memory format and torch.compile of the denoiser."""

    name = detect(pipe).denoiser
    if channels_last:
        getattr(pipe, name).to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        setattr(pipe, name, torch.compile(getattr(pipe, name), mode=compile_mode, fullgraph=True))
    return pipe
