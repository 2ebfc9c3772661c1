"""LoRA weights in the kohya key format (`lora_unet_..._to_q.lora_down.weight` + `.alpha`), which ComfyUI, A1111,
SD.Next and InvokeAI read; built with diffusers' own converters, checked by converting back.

diffusers' `convert_state_dict_to_kohya` writes alpha = rank (scale 1); our adapters may be trained with another
lora_alpha, so the alphas are set from the adapter config saved in the LoRA file's metadata.
"""

from __future__ import annotations

import json

import torch
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
from diffusers.utils import convert_state_dict_to_kohya

from aifeedback.errors import AifError

ADAPTER_METADATA = "unet_lora_adapter_metadata"  # the key diffusers' save_lora_weights stores the peft config under


def to_kohya(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """Our diffusers-format UNet LoRA (`unet.<module>.lora_A.weight`) -> kohya keys with per-module alphas."""
    if not all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in tensors):
        raise AifError("--format kohya converts UNet LoRA weights (unet.*.lora_A/B); this file holds other keys")
    kohya = convert_state_dict_to_kohya(tensors)
    alpha = _lora_alpha(metadata)
    if alpha is not None:
        for key in [k for k in kohya if k.endswith(".alpha")]:
            kohya[key] = torch.tensor(alpha)
    return kohya


def from_kohya(kohya: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """kohya keys -> diffusers' keys (`unet.<module>.lora.down.weight`) and alphas, as load_lora_weights reads them."""
    return _convert_non_diffusers_lora_to_diffusers(dict(kohya))


def _lora_alpha(metadata: dict[str, str] | None) -> float | None:
    config = json.loads((metadata or {}).get(ADAPTER_METADATA, "{}"))
    return float(config["lora_alpha"]) if "lora_alpha" in config else None
