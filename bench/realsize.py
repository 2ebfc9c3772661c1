"""Real-size SDXL / SD1.5 architectures with random weights, built offline for the benchmarks.

The GPU hosts that run `bench/` cannot reach the Hugging Face Hub, and a model's speed does not depend on its
weights, so the benchmarks build the published architectures (the configs of stabilityai/stable-diffusion-xl-base-1.0
and stable-diffusion-v1-5, written down here) with random weights. tests/test_bench.py checks the parameter
counts on the meta device against the released checkpoints.
"""

from __future__ import annotations

from typing import Any

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8, cross_attention_dim=768,
)
# SDXL's and SD1.5's VAEs share one architecture; they differ in scaling factor (and SDXL's fp16 overflow).
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
# CLIP ViT-L/14 text tower (SD1.5's encoder, SDXL's first) and OpenCLIP ViT-bigG/14's (SDXL's second).
TEXT_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu")
TEXT_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 projection_dim=1280, hidden_act="gelu")
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 timestep_spacing="leading", prediction_type="epsilon")


def text_config(**kw: Any):
    """A CLIPTextConfig with the released vocabulary, 77 positions and the released token ids."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1, **kw)


def build_pipeline(family: str, device: str = "cpu", dtype: str = "float16", fp16_vae: bool = False) -> Any:
    """The SDXL ("sdxl") or SD1.5 ("sd15") text-to-image pipeline at real size with random weights.

    Weights are initialised directly on `device` (seconds on a GPU, not minutes on its CPU). `fp16_vae` marks
    the VAE as fp16-safe (force_upcast False), as madebyollin/sdxl-vae-fp16-fix is: same architecture and cost.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from aifeedback.families.loading import torch_dtype
    from aifeedback.zoo.tokenizer import clip_tokenizer

    if family not in ("sdxl", "sd15"):
        raise ValueError(f"unknown family '{family}'; use sdxl or sd15")
    td = torch_dtype(dtype)
    torch.manual_seed(0)
    with torch.device(device):  # the schedulers keep CPU tensors, so only the networks are built in here
        vae = AutoencoderKL(**VAE, sample_size=1024 if family == "sdxl" else 512,
                            scaling_factor=0.13025 if family == "sdxl" else 0.18215, force_upcast=not fp16_vae)
        unet = UNet2DConditionModel(**(SDXL_UNET if family == "sdxl" else SD15_UNET))
        text_encoder = CLIPTextModel(text_config(**TEXT_L))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(**TEXT_BIGG)) if family == "sdxl" else None
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer("<|endoftext|>"), tokenizer_2=clip_tokenizer("!"), unet=unet,
            scheduler=EulerDiscreteScheduler(**SCHEDULER),
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
            scheduler=PNDMScheduler(**SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=td)
