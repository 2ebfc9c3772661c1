"""Stable Diffusion 1.x/2.x: one CLIP text encoder, its last hidden state (after the final layer norm) as the
UNet's cross-attention context, no pooled embedding or micro-conditioning; 512 px, guidance 7.5."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from aifeedback.families.base import TextEncoders, UNetFamily, tokenize


class SD15(UNetFamily):
    addition_embed_type = None
    resolution = 512
    guidance = 7.5
    lora_pipeline = StableDiffusionPipeline

    def text_encoders(self, pipe: Any) -> TextEncoders:
        return TextEncoders([pipe.tokenizer], [pipe.text_encoder])

    @torch.no_grad()
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = tokenize(text.tokenizers[0], captions).to(text.device)
        return {"embeds": text.encoders[0](ids)[0]}
