"""Tiny random FLUX.1 pipelines (`tiny-flux` like schnell, `tiny-flux-dev` with the dev model's guidance embedding):
the real classes (FluxTransformer2DModel, CLIPTextModel, T5EncoderModel, a 16-channel AutoencoderKL with FLUX's
shift and scale, FlowMatchEulerDiscreteScheduler) at tiny sizes, from fixed seeds, cached like tiny-sdxl.

The CLIP tokenizer is the real one; the T5 tokenizer is the small offline one (zoo/tokenizer.py), as T5's
SentencePiece vocabulary cannot be downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, T5Config, T5EncoderModel

from aifeedback.zoo.tiny import _text_config, _vae
from aifeedback.zoo.tokenizer import clip_tokenizer, t5_tokenizer

# FLUX.1-dev's scheduler config (schnell: shift 1, no dynamic shifting); the VAE's latent shift and scale.
DEV_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                     max_image_seq_len=4096)
SCHNELL_SCHEDULER = dict(DEV_SCHEDULER, shift=1.0, use_dynamic_shifting=False)
FLUX_VAE = dict(scaling_factor=0.3611, shift_factor=0.1159)


def _build(out: Path, guidance_embeds: bool) -> None:
    torch.manual_seed(0)
    clip = CLIPTextModel(_text_config(hidden=16, projection=16))  # FLUX uses CLIP-L's pooled output only
    t5_tok = t5_tokenizer()
    torch.manual_seed(4)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    torch.manual_seed(2)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64,  # 16 latent channels packed in 2x2 patches, as in the real model
        num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32,  # T5's width
        pooled_projection_dim=16,  # CLIP's pooled output
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),  # rotary axes sum to the head dim, as 16+56+56
    )
    torch.manual_seed(3)
    vae = _vae(FLUX_VAE["scaling_factor"], latent_channels=16, shift_factor=FLUX_VAE["shift_factor"],
               use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(**(DEV_SCHEDULER if guidance_embeds else SCHNELL_SCHEDULER))
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(),
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(out)


def build_tiny_flux(out: Path) -> None:
    """Like FLUX.1-schnell: no guidance embedding, no sigma shift."""
    _build(out, guidance_embeds=False)


def build_tiny_flux_dev(out: Path) -> None:
    """Like FLUX.1-dev: the guidance embedding (distilled guidance) and the resolution-dependent sigma shift."""
    _build(out, guidance_embeds=True)
