"""Tiny random FLUX.2 pipelines: `tiny-flux2` (like FLUX.2 [dev], `Flux2Pipeline`: a Mistral3ForConditionalGeneration
text encoder with its PixtralProcessor, the guidance embedding) and `tiny-flux2-klein` (like FLUX.2 [klein] base,
`Flux2KleinPipeline`: a Qwen3ForCausalLM text encoder, no guidance embedding, classifier-free guidance), both with
the real Flux2Transformer2DModel and AutoencoderKLFlux2 at tiny sizes, from fixed seeds, cached like tiny-sdxl.

The text encoders are deep enough for the layers the pipelines read (dev: hidden states 10, 20, 30 of Mistral;
klein: 9, 18, 27 of Qwen3), 16 wide. The tokenizers are the offline byte-level ones (zoo/tokenizer.py): Mistral's and
Qwen3's vocabularies cannot be downloaded here. The real sizes are in `REAL_TRANSFORMERS` (tests/test_flux2.py builds
them on the meta device and counts their parameters).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from transformers import MistralConfig, Qwen3Config, Qwen3ForCausalLM
from transformers.models.mistral3 import Mistral3Config, Mistral3ForConditionalGeneration
from transformers.models.pixtral import PixtralVisionConfig

from aifeedback.zoo.tiny_flux import DEV_SCHEDULER
from aifeedback.zoo.tokenizer import mistral_processor, qwen_tokenizer

# diffusers' scripts/convert_flux2_to_diffusers.py (get_flux2_transformer_config): the transformer configs of
# black-forest-labs/FLUX.2-dev and FLUX.2 [klein] 4B / 9B (the class defaults fill what it leaves out).
_COMMON = dict(patch_size=1, in_channels=128, attention_head_dim=128, timestep_guidance_channels=256, mlp_ratio=3.0,
               axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6)
REAL_TRANSFORMERS = {
    "dev": dict(_COMMON, num_layers=8, num_single_layers=48, num_attention_heads=48, joint_attention_dim=15360),
    "klein-4b": dict(_COMMON, num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680,
                     guidance_embeds=False),
    "klein-9b": dict(_COMMON, num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288,
                     guidance_embeds=False),
}
WIDTH = 16  # the tiny text encoders' hidden size: the transformer reads 3 of their layers stacked (48 features)


def _transformer(guidance_embeds: bool, latent_channels: int) -> Flux2Transformer2DModel:
    torch.manual_seed(2)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * latent_channels,  # 2x2-patchified VAE latents, as the real 32 -> 128 channels
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * WIDTH, timestep_guidance_channels=32, mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),  # (T, H, W, L) rotary axes summing to the head dim, as 4 x 32 = 128
        rope_theta=2000, eps=1e-6, guidance_embeds=guidance_embeds)


def _vae(latent_channels: int = 8) -> AutoencoderKLFlux2:
    """Two blocks = one 2x downsample (the real VAE has four, 8x; 32 latent channels); same class and code path. The
    batch norm over the patchified latents - whose running statistics normalise the denoiser's latents - gets seeded
    statistics (a fresh one holds mean 0, variance 1, which would hide a missing normalisation)."""
    torch.manual_seed(3)
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=32, use_quant_conv=True, use_post_quant_conv=True)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.1 * torch.randn(vae.bn.running_mean.shape))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape))
    return vae


def build_tiny_flux2(out: Path) -> None:
    """Like FLUX.2 [dev]: Mistral3ForConditionalGeneration (a 1-layer Pixtral vision tower, a 30-layer Mistral text
    model), the guidance embedding, the dynamically shifted scheduler."""
    processor = mistral_processor()
    torch.manual_seed(0)
    vision = PixtralVisionConfig(hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=8, patch_size=16, image_size=64)
    text = MistralConfig(vocab_size=len(processor.tokenizer), hidden_size=WIDTH, intermediate_size=32,
                         num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, pad_token_id=processor.tokenizer.pad_token_id)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        vision_config=vision, text_config=text, image_token_index=processor.image_token_id, spatial_merge_size=2))
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER), vae=_vae(),
                         text_encoder=text_encoder, tokenizer=processor,
                         transformer=_transformer(guidance_embeds=True, latent_channels=8))
    pipe.save_pretrained(out)


def build_tiny_flux2_klein(out: Path) -> None:
    """Like FLUX.2 [klein] base (undistilled: classifier-free guidance): Qwen3ForCausalLM (27 layers), no guidance
    embedding."""
    tok = qwen_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=27, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True))
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER), vae=_vae(),
                              text_encoder=text_encoder, tokenizer=tok,
                              transformer=_transformer(guidance_embeds=False, latent_channels=8), is_distilled=False)
    pipe.save_pretrained(out)
