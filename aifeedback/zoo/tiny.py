"""The offline tiny-model zoo: small random-initialised diffusers pipelines with the real architectures.

No weights can be downloaded in tests or CI, so `tiny-sdxl`, `tiny-sd15` and `tiny-sd3` are built here from a fixed seed
(same bytes on every machine), saved once under the cache directory, and then loaded with `from_pretrained`
like any hub model. Their CLIP tokenizers are the real CLIP BPE tokenizer, built from the vocab file that open_clip
ships, so prompts tokenise exactly as with the real models; tiny-sd3's T5 tokenizer is a small offline one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from aifeedback.zoo.tokenizer import BOS, EOS, VOCAB_SIZE, clip_tokenizer, t5_tokenizer


def _text_config(hidden: int, projection: int):

    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, hidden_size=hidden,
        intermediate_size=2 * hidden, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77,
        projection_dim=projection, hidden_act="gelu",
    )


def _vae(scaling_factor: float, latent_channels: int = 4, **flow):

    # Two blocks = one 2x downsample (the real VAE has four blocks, 8x); same class and code path.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32, scaling_factor=scaling_factor, **flow,
    )


def _sdxl_unet(cross_attention_dim: int, time_ids: int, pooled_dim: int) -> UNet2DConditionModel:
    """A ~1M-parameter SDXL-layout UNet: text_time conditioning on `time_ids` micro-conditioning values (six for the
    base, five for the refiner) plus the pooled text embedding."""
    time_dim = 8
    torch.manual_seed(2)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1), use_linear_projection=True,
        cross_attention_dim=cross_attention_dim, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=time_ids * time_dim + pooled_dim, norm_num_groups=8,
    )


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon",
    )


def _tiny_sdxl(scheduler) -> StableDiffusionXLPipeline:
    torch.manual_seed(0)
    te1 = CLIPTextModel(_text_config(hidden=16, projection=16))
    torch.manual_seed(1)
    te2 = CLIPTextModelWithProjection(_text_config(hidden=16, projection=16))
    unet = _sdxl_unet(cross_attention_dim=32, time_ids=6, pooled_dim=16)  # te1 + te2 hidden, concatenated as in SDXL
    torch.manual_seed(3)
    return StableDiffusionXLPipeline(
        vae=_vae(0.13025), text_encoder=te1, text_encoder_2=te2, tokenizer=clip_tokenizer("<|endoftext|>"),
        tokenizer_2=clip_tokenizer("!"), unet=unet, scheduler=scheduler,
    )


def build_tiny_sdxl(out: Path) -> None:
    """A StableDiffusionXLPipeline with two text encoders and text_time conditioning, ~1M UNet parameters."""
    _tiny_sdxl(_sdxl_scheduler()).save_pretrained(out)


def build_tiny_sdxl_turbo(out: Path) -> None:
    """tiny-sdxl's weights with SDXL Turbo's sampler: EulerAncestral on "trailing" timesteps (the settings of
    stabilityai/sdxl-turbo's scheduler config), so one step starts from the last training timestep."""
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="trailing", prediction_type="epsilon",
    )
    _tiny_sdxl(scheduler).save_pretrained(out)


def build_tiny_sdxl_refiner(out: Path) -> None:
    """A StableDiffusionXLImg2ImgPipeline laid out as the SDXL refiner: the second (OpenCLIP-style) text encoder
    alone, whose width is the UNet's context and pooled width, and five micro-conditioning values (original size,
    crop, aesthetic score) instead of six; `requires_aesthetics_score` as in the refiner's model_index.json."""
    torch.manual_seed(1)
    te2 = CLIPTextModelWithProjection(_text_config(hidden=32, projection=32))
    unet = _sdxl_unet(cross_attention_dim=32, time_ids=5, pooled_dim=32)
    torch.manual_seed(3)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(0.13025), text_encoder=None, text_encoder_2=te2, tokenizer=None, tokenizer_2=clip_tokenizer("!"),
        unet=unet, scheduler=_sdxl_scheduler(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
    pipe.save_pretrained(out)


def build_tiny_sd15(out: Path) -> None:
    """A StableDiffusionPipeline with one text encoder, ~1M UNet parameters, no safety checker."""

    torch.manual_seed(0)
    te = CLIPTextModel(_text_config(hidden=32, projection=32))
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8,
    )
    torch.manual_seed(3)
    vae = _vae(0.18215)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
        set_alpha_to_one=False, prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


def build_tiny_sd3(out: Path) -> None:
    """A StableDiffusion3Pipeline: CLIP-L- and CLIP-G-like encoders with projections, a T5 encoder, an MMDiT
    transformer (patch 2, ~50k parameters) and a 16-channel VAE with SD3's shift and scale; flow-matching scheduler
    with SD3's shift 3."""

    torch.manual_seed(0)
    te1 = CLIPTextModelWithProjection(_text_config(hidden=16, projection=16))
    torch.manual_seed(1)
    te2 = CLIPTextModelWithProjection(_text_config(hidden=16, projection=16))
    t5_tok = t5_tokenizer()
    torch.manual_seed(4)
    te3 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    torch.manual_seed(2)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, caption_projection_dim=16,  # = heads * head dim, as in the real models
        joint_attention_dim=32,  # T5's width; the CLIP states (16 + 16) are zero-padded to it
        pooled_projection_dim=32,  # the two CLIP projections, concatenated
        pos_embed_max_size=16,
    )
    torch.manual_seed(3)
    vae = _vae(1.5035, latent_channels=16, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=te1, tokenizer=clip_tokenizer(), text_encoder_2=te2, tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=te3, tokenizer_3=t5_tok,
    )
    pipe.save_pretrained(out)
