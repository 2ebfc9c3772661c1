"""LoRA weights in the kohya key format (`lora_unet_..._to_q.lora_down.weight` + `.alpha`), which ComfyUI, A1111,
SD.Next and InvokeAI read; built with diffusers' own converters, checked by converting back.

diffusers' `convert_state_dict_to_kohya` writes alpha = rank (scale 1); our adapters may be trained with another
lora_alpha, so the alphas are set from the adapter config saved in the LoRA file's metadata.
"""

from __future__ import annotations

import json

import torch
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
from diffusers.utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft

from aifeedback.errors import AifError

ADAPTER_METADATA = "lora_adapter_metadata"  # where diffusers' save_lora_weights keeps the peft config ("unet.*" keys)


def to_kohya(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """Our diffusers-format UNet LoRA (`unet.<module>.lora.down.weight`) -> kohya keys with per-module alphas."""
    if not all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in tensors):
        raise AifError("--format kohya converts UNet LoRA weights (unet.*.lora.down/up); this file holds other keys")
    kohya = convert_state_dict_to_kohya(to_peft(tensors))  # diffusers converts to kohya from peft keys only
    alpha = _lora_alpha(metadata)
    if alpha is not None:
        for key in [k for k in kohya if k.endswith(".alpha")]:
            kohya[key] = torch.tensor(alpha)
    return kohya


def from_kohya(kohya: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """kohya keys -> peft keys (`unet.<module>.lora_A.weight`) and per-module alphas, through diffusers' own readers
    (the path `load_lora_weights` takes for a kohya file)."""
    tensors, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    return convert_unet_state_dict_to_peft(tensors), alphas


def to_peft(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our diffusers-format LoRA keys -> peft keys (what from_kohya gives back)."""
    return convert_unet_state_dict_to_peft(tensors)


def _lora_alpha(metadata: dict[str, str] | None) -> float | None:
    config = json.loads((metadata or {}).get(ADAPTER_METADATA, "{}"))
    return float(config["unet.lora_alpha"]) if "unet.lora_alpha" in config else None
