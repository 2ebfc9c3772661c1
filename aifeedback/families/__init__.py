"""Model families: the registry of what `aif` can train and sample, and detection of a model's family.

A family (families/base.py `Family`) holds everything that differs between model families: how to recognise the
denoiser, prompt encoding and the denoiser's conditioning, training noise and target, LoRA layers and defaults.
To add one (SD3, FLUX, ...): write `families/NAME.py` with a `Family` subclass and add an entry to FAMILIES.

This module is light (no torch): entries name their module, which is imported when the family is first used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aifeedback.errors import AifError
from aifeedback.registry import Registry

if TYPE_CHECKING:  # only for annotations: the family modules import torch and diffusers
    from aifeedback.families.base import Family


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family: its name, a one-line help, and where its `Family` subclass lives."""

    name: str
    help: str
    module: str
    cls: str

    def load(self) -> "Family":
        """The family's (stateless) instance; its module is imported on the first call."""
        if self.name not in _LOADED:
            _LOADED[self.name] = getattr(importlib.import_module(self.module), self.cls)(self.name, self.help)
        return _LOADED[self.name]


_LOADED: dict[str, "Family"] = {}

FAMILIES: Registry[FamilyEntry] = Registry("model family", [
    FamilyEntry("sd15", "Stable Diffusion 1.5 layout: one CLIP text encoder, UNet without added conditioning (512 px)",
                "aifeedback.families.sd15", "SD15"),
    FamilyEntry("sdxl", "Stable Diffusion XL layout: two CLIP text encoders, pooled embedding and size/crop time ids "
                "(1024 px)", "aifeedback.families.sdxl", "SDXL"),
    FamilyEntry("sdxl-refiner", "SDXL refiner layout: second text encoder only, pooled embedding and size/crop/"
                "aesthetic-score time ids (1024 px, img2img pipeline)", "aifeedback.families.sdxl_refiner",
                "SDXLRefiner"),
    FamilyEntry("sd3", "Stable Diffusion 3 / 3.5 layout: MMDiT transformer trained by flow matching; CLIP-L + CLIP-G "
                "(pooled) + T5 text encoders, 16-channel VAE (1024 px)", "aifeedback.families.sd3", "SD3"),
    FamilyEntry("flux", "FLUX.1 layout (dev, schnell): flow-matching transformer on packed latents; CLIP-L pooled "
                "+ T5, the dev model's guidance embedding, 16-channel VAE (1024 px)",
                "aifeedback.families.flux", "Flux"),
    FamilyEntry("z-image", "Z-Image layout (Z-Image, Z-Image-Turbo): single-stream flow-matching transformer; Qwen3 "
                "text encoder (chat template, second-to-last hidden state), 16-channel FLUX VAE (1024 px)",
                "aifeedback.families.z_image", "ZImage"),
    FamilyEntry("qwen-image", "Qwen-Image layout: dual-stream flow-matching transformer on packed latents; Qwen2.5-VL "
                "text encoder (chat template, last hidden state), video-style 16-channel VAE, true CFG (1024 px)",
                "aifeedback.families.qwen_image", "QwenImage"),
    FamilyEntry("flux2", "FLUX.2 layout ([dev], [klein]): flow-matching transformer on patchified, batch-norm "
                "normalised latents; Mistral3 ([dev]) or Qwen3 ([klein]) hidden layers stacked, [dev]'s guidance "
                "embedding, 32-channel VAE (1024 px)", "aifeedback.families.flux2", "Flux2"),
])


class UnsupportedModelError(AifError, ValueError):
    """A model that belongs to none of the registered families."""


def get_family(name: str) -> "Family":
    """A registered family by name (an unknown name lists the valid ones)."""
    return FAMILIES[name].load()


def detect(pipe_or_denoiser: Any) -> "Family":
    """The family of a diffusers pipeline or of its denoiser (UNet, transformer), from the denoiser's config."""
    for entry in FAMILIES.values():
        fam = entry.load()
        config = getattr(getattr(pipe_or_denoiser, fam.denoiser, pipe_or_denoiser), "config", None)
        if config is not None and fam.matches(config):
            return fam
    supported = "; ".join(f"{name} ({help})" for name, help in FAMILIES.describe().items())
    raise UnsupportedModelError(
        f"unsupported model: {type(pipe_or_denoiser).__name__} ({_conditioning(pipe_or_denoiser)}) belongs to none "
        f"of the supported families: {supported}. Fix: pass a model of one of them.")


def family(pipe_or_denoiser: Any) -> str:
    """The name of the detected family ('sd15', 'sdxl', 'sd3')."""
    return detect(pipe_or_denoiser).name


def _conditioning(obj: Any) -> str:
    """What made detection fail, in words: the UNet's added conditioning, or the missing denoiser."""
    model = getattr(obj, "unet", obj)
    config = getattr(model, "config", None)
    if config is None:
        return "no denoiser with a config"
    if "addition_embed_type" in config:
        return f"UNet conditioning '{config.get('addition_embed_type')}'"
    return f"denoiser {config.get('_class_name', type(model).__name__)}"
