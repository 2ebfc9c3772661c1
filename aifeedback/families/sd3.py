"""Stable Diffusion 3 / 3.5 (SD3-medium, SD3.5-medium/large): an MMDiT `SD3Transformer2DModel` trained by flow
matching (families/flow.py), conditioned as `StableDiffusion3Pipeline.encode_prompt` does: the PENULTIMATE hidden
states of CLIP-L and CLIP-G (77 tokens each, concatenated on channels and zero-padded to T5's width), then T5's last
hidden state (256 tokens) along the sequence; the pooled projections of both CLIPs concatenated (`pooled`). 1024 px,
guidance 7.0 (the pipeline's default), a 16-channel VAE with shift and scale.

Trained on the velocity target (`noise - x0`, Flow-DPO's form): diffusers' `train_dreambooth_sd3.py` with
`--precondition_outputs 0`, not that script's default 1 (x0 target, an error sigma^2 times ours); its loss weights
are uniform (`logit_normal`), so beta is constant over timesteps as in Flow-DPO (see families/flow.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import StableDiffusion3Pipeline

from aifeedback.families.base import TextEncoders, tokenize
from aifeedback.families.flow import FlowFamily


class SD3(FlowFamily):
    resolution = 1024
    guidance = 7.0
    steps = 28  # StableDiffusion3Pipeline's default num_inference_steps
    lora_pipeline = StableDiffusion3Pipeline
    # diffusers' SD3 LoRA script's default target modules: the joint attention's image and text projections
    lora_targets = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
                    "attn.to_out.0", "attn.to_q", "attn.to_v")
    vae_fp16_safe = False  # diffusers' SD3 training script keeps the VAE in fp32
    t5_length = 256  # StableDiffusion3Pipeline's default max_sequence_length

    @classmethod
    def matches(cls, config: Any) -> bool:
        # caption_projection_dim is SD3Transformer2DModel's own (FLUX's transformer has no caption projection)
        return "caption_projection_dim" in config and "joint_attention_dim" in config

    def text_encoders(self, pipe: Any) -> TextEncoders:
        if pipe.text_encoder_3 is None:
            raise ValueError("this SD3 pipeline was loaded without its T5 encoder (text_encoder_3=None); training "
                             "and rendering here need it: load the model with all three text encoders")
        return TextEncoders([pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3],
                            [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3])

    @torch.no_grad()
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        clip, pooled = [], []
        for tok, enc in zip(text.tokenizers[:2], text.encoders[:2], strict=True):
            out = enc(tokenize(tok, captions).to(text.device), output_hidden_states=True)
            clip.append(out.hidden_states[-2])
            pooled.append(out[0])  # CLIPTextModelWithProjection.text_embeds
        ids = text.tokenizers[2](captions, padding="max_length", max_length=self.t5_length, truncation=True,
                                 add_special_tokens=True, return_tensors="pt").input_ids
        t5 = text.encoders[2](ids.to(text.device))[0]
        clip_embeds = torch.cat(clip, dim=-1)
        clip_embeds = F.pad(clip_embeds, (0, t5.shape[-1] - clip_embeds.shape[-1]))
        return {"embeds": torch.cat([clip_embeds.to(t5.dtype), t5], dim=-2), "pooled": torch.cat(pooled, dim=-1)}

    def predict(self, model: Any, noisy: torch.Tensor, t: torch.Tensor, prompts: dict[str, torch.Tensor],
                micro: torch.Tensor | None) -> torch.Tensor:
        return model(hidden_states=noisy, timestep=t, encoder_hidden_states=prompts["embeds"],
                     pooled_projections=prompts["pooled"], return_dict=False)[0]
