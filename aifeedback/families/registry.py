"""The registered model families, and detection of a pipeline's or denoiser's family.

Adding a family: write `families/<name>.py` with a `Family` subclass and add an instance to FAMILIES.
(Not in families/__init__.py: the family modules import torch and diffusers, and `families.loading`, which the
light command line imports, would import them through the package.)
"""

from __future__ import annotations

import difflib
from typing import Any

from aifeedback.errors import AifError
from aifeedback.families.base import Family
from aifeedback.families.sd15 import SD15
from aifeedback.families.sdxl import SDXL

FAMILIES: dict[str, Family] = {f.name: f for f in (SD15(), SDXL())}


class UnsupportedModelError(AifError, ValueError):
    """A model that belongs to none of the registered families."""


def describe() -> dict[str, str]:
    """Family name -> one-line help, for listings and error messages."""
    return {name: fam.help for name, fam in FAMILIES.items()}


def _supported() -> str:
    return "; ".join(f"{name} ({help})" for name, help in describe().items())


def get_family(name: str) -> Family:
    """A registered family by name."""
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, FAMILIES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnsupportedModelError(f"unknown model family '{name}';{hint} valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect(pipe_or_denoiser: Any) -> Family:
    """The family of a diffusers pipeline or of its denoiser (UNet, transformer), from the denoiser's config."""
    for fam in FAMILIES.values():
        config = getattr(getattr(pipe_or_denoiser, fam.denoiser, pipe_or_denoiser), "config", None)
        if config is not None and fam.matches(config):
            return fam
    raise UnsupportedModelError(
        f"unsupported model: {type(pipe_or_denoiser).__name__} ({_conditioning(pipe_or_denoiser)}) belongs to none of "
        f"the supported families: {_supported()}. Fix: pass a model of one of them.")


def _conditioning(obj: Any) -> str:
    """What made detection fail, in words: the UNet's added conditioning, or the missing denoiser."""
    model = getattr(obj, "unet", obj)
    config = getattr(model, "config", None)
    if config is None:
        return "no denoiser with a config"
    if "addition_embed_type" in config:
        return f"UNet conditioning '{config.get('addition_embed_type')}'"
    return f"denoiser {config.get('_class_name', type(model).__name__)}"


def family(pipe_or_denoiser: Any) -> str:
    """The name of the detected family ('sd15', 'sdxl')."""
    return detect(pipe_or_denoiser).name
