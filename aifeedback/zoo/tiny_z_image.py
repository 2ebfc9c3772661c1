"""A tiny random Z-Image pipeline (`tiny-z-image`): the real classes of `ZImagePipeline` (ZImageTransformer2DModel, a
Qwen3Model text encoder with a Qwen2Tokenizer, a 16-channel AutoencoderKL with FLUX's shift and scale - Z-Image
decodes with the FLUX.1 VAE - and FlowMatchEulerDiscreteScheduler) at tiny sizes, from fixed seeds, cached like
tiny-sdxl.

The tokenizer is the offline byte-level one (zoo/tokenizer.py), as Qwen3's vocabulary cannot be downloaded here.
The real sizes are in `REAL_TRANSFORMER` and `REAL_TEXT_ENCODER` (tests/test_z_image.py builds them on the meta
device and checks their parameter counts).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from aifeedback.zoo.tiny import _vae
from aifeedback.zoo.tokenizer import qwen_tokenizer

# Tongyi-MAI/Z-Image-Turbo's transformer/config.json (as third-party copies of it record it; the hub cannot be read
# here), and its text encoder Qwen3-4B's config (Qwen/Qwen3-4B; Z-Image loads it as Qwen3Model, without the LM head).
REAL_TRANSFORMER = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                        n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
                        rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
REAL_TEXT_ENCODER = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                         rms_norm_eps=1e-6, rope_theta=1000000, tie_word_embeddings=True)
# Z-Image-Turbo's scheduler config: a static shift of 3 (the pipeline's resolution-dependent mu only applies with
# use_dynamic_shifting, which it leaves off).
SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
FLUX_VAE = dict(scaling_factor=0.3611, shift_factor=0.1159)


def build_tiny_z_image(out: Path) -> None:
    """Qwen3 (2 layers, width 32) whose second-to-last hidden state is the caption feature, a ZImageTransformer2DModel
    (width 32, 2 heads of 16 = its rotary axes 8 + 4 + 4, one refiner layer per stream, 2 main layers, ~0.4M
    parameters, most in the timestep MLP), the 16-channel VAE with one 2x downsample."""
    tok = qwen_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    torch.manual_seed(2)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32,  # the text encoder's width
        rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[1536, 512, 512])
    with torch.no_grad():  # the class leaves its two pad tokens uninitialised (torch.empty): give them seeded values
        transformer.x_pad_token.copy_(torch.randn(transformer.x_pad_token.shape))
        transformer.cap_pad_token.copy_(torch.randn(transformer.cap_pad_token.shape))
    torch.manual_seed(3)
    vae = _vae(FLUX_VAE["scaling_factor"], latent_channels=16, shift_factor=FLUX_VAE["shift_factor"],
               use_quant_conv=False, use_post_quant_conv=False)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=text_encoder,
                          tokenizer=tok, transformer=transformer)
    pipe.save_pretrained(out)
