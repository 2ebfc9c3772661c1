"""A tiny random Qwen-Image pipeline (`tiny-qwen-image`): the real classes of `QwenImagePipeline`
(QwenImageTransformer2DModel, a Qwen2_5_VLForConditionalGeneration text encoder with a Qwen2Tokenizer, the
AutoencoderKLQwenImage video-style VAE and FlowMatchEulerDiscreteScheduler) at tiny sizes, from fixed seeds, cached
like tiny-sdxl.

The tokenizer is the offline byte-level Qwen one (zoo/tokenizer.py), as Qwen2.5's vocabulary cannot be downloaded
here. The real sizes are in `REAL_TRANSFORMER`, `REAL_TEXT_ENCODER` and `REAL_VAE` (tests/test_qwen_image.py builds
them on the meta device and checks their parameter counts).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from aifeedback.zoo.tokenizer import qwen_tokenizer

# Qwen/Qwen-Image's transformer/config.json (as copies of it on the hub record it, e.g. the QwenImageTransformer2DModel
# configs of TensorStack/Qwen-Image-ts and callgg/qi-decoder; the hub cannot be read here).
REAL_TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                        axes_dims_rope=(16, 56, 56))
# Its text encoder is Qwen/Qwen2.5-VL-7B-Instruct (the pipeline loads the whole Qwen2_5_VLForConditionalGeneration:
# vision tower and untied LM head included); transformers' Qwen2_5_VLConfig holds that model's vision tower by default.
REAL_TEXT_ENCODER = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                     rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1000000.0,
                                                             mrope_section=[16, 24, 24])),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       fullatt_block_indexes=[7, 15, 23, 31]),
    tie_word_embeddings=False)
# Qwen-Image's VAE is AutoencoderKLQwenImage's defaults (Wan 2.1's layout: base_dim 96, dim_mult 1-2-4-4, 16 latent
# channels with per-channel latents_mean / latents_std, 8x spatial downsampling).
REAL_VAE: dict = {}
# Qwen/Qwen-Image's scheduler/scheduler_config.json (as training toolkits copy it, e.g. ostris/ai-toolkit): dynamic
# shifting by image size with an exponential time shift, sigmas stretched to end at 0.02; unshifted in training (the
# LoRA script draws from this config's 1000-step grid, where shift 1.0 leaves sigma = t / 1000).
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, invert_sigmas=False, max_image_seq_len=8192, max_shift=0.9,
                 num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, stochastic_sampling=False,
                 time_shift_type="exponential", use_beta_sigmas=False, use_dynamic_shifting=True,
                 use_exponential_sigmas=False, use_karras_sigmas=False)


def build_tiny_qwen_image(out: Path) -> None:
    """Qwen2.5-VL (2 text layers of width 32 with its multimodal rotary sections, a 1-block vision tower the text
    path never runs), a QwenImageTransformer2DModel (2 dual-stream blocks, 2 heads of 16 = its rotary axes 4 + 6 + 6),
    the video-style 16-channel VAE with one 2x downsample (vae_scale_factor 2)."""
    tok = qwen_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.pad_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        tie_word_embeddings=False))
    torch.manual_seed(2)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))  # the text encoder's width
    torch.manual_seed(3)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                                 temperal_downsample=[False])
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                             text_encoder=text_encoder, tokenizer=tok, transformer=transformer)
    pipe.save_pretrained(out)
