"""Stable Diffusion XL: two text encoders, the PENULTIMATE hidden state of each (768 + 1280 = 2048 channels, no
final layer norm) as cross-attention context, plus the second encoder's pooled projection (`text_embeds`, 1280) and
six `time_ids` per image (size and crop micro-conditioning); 1024 px, guidance 5.0. The stock VAE overflows in fp16.
SDXL Turbo is this family (same UNet and encoders) with its own sampling defaults (resolve.MODEL_DEFAULTS); the
refiner, whose UNet is conditioned differently, is the `sdxl-refiner` family (sdxl_refiner.py).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from aifeedback.families.base import TextEncoders, UNetFamily, tokenize


class SDXL(UNetFamily):
    addition_embed_type = "text_time"
    resolution = 1024
    guidance = 5.0
    lora_pipeline = StableDiffusionXLPipeline
    vae_fp16_safe = False
    refiner = False  # the refiner's UNet is told apart by its conditioning widths (is_refiner_unet)

    @classmethod
    def matches(cls, config: Any) -> bool:
        return super().matches(config) and is_refiner_unet(config) == cls.refiner

    def text_encoders(self, pipe: Any) -> TextEncoders:
        return TextEncoders([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2])

    @torch.no_grad()
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        embeds, pooled = [], None
        for tok, enc in zip(text.tokenizers, text.encoders, strict=True):
            out = enc(tokenize(tok, captions).to(text.device), output_hidden_states=True)
            embeds.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's pooled projection (CLIPTextModelWithProjection.text_embeds)
        return {"embeds": torch.cat(embeds, dim=-1), "pooled": pooled}

    def added_conditioning(self, prompts: dict[str, torch.Tensor], micro: torch.Tensor | None) -> dict[str, Any]:
        if micro is None:
            raise ValueError("SDXL needs each image's time ids (original size, crop, target size)")
        embeds = prompts["embeds"]
        ids = micro.to(embeds.device, embeds.dtype)
        return {"added_cond_kwargs": {"text_embeds": prompts["pooled"], "time_ids": ids}}


def is_refiner_unet(config: Any) -> bool:
    """Whether an SDXL-layout (text_time) UNet config is the refiner's. The refiner reads the second text encoder
    alone, so its context width is that encoder's width, which is also its pooled width (OpenCLIP bigG: 1280 both),
    and its added embedding holds five time ids (original size, crop, aesthetic score) besides the pooled embedding:
    2560 = 5 * 256 + 1280. The base holds six time ids and a wider context: 2816 = 6 * 256 + 1280, context 2048."""
    dim, context = config.get("addition_time_embed_dim"), config.get("cross_attention_dim")
    if not (isinstance(dim, int) and isinstance(context, int)):  # context may be per-block (a list) in other UNets
        return False
    return config.get("projection_class_embeddings_input_dim") == 5 * dim + context
