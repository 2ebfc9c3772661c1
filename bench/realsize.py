"""Real-size architectures with random weights, built offline for the benchmarks: SDXL, SD1.5, SD3.5 medium and
large, FLUX.1 dev and schnell, FLUX.2 [dev] and [klein] 4B, Qwen-Image, Z-Image.

The GPU hosts that run `bench/` cannot reach the Hugging Face Hub, and a model's speed does not depend on its
weights, so the benchmarks build the published architectures (the config.json values of
stabilityai/stable-diffusion-xl-base-1.0, stable-diffusion-v1-5, stabilityai/stable-diffusion-3.5-medium and -large,
black-forest-labs/FLUX.1-dev and -schnell, written down here; the 2026 families' from aifeedback/zoo) with random
weights. tests/test_bench.py checks the
parameter counts on the meta device against the released checkpoints.
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
# The flow-matching transformers (transformer/config.json of each release).
SD35_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD35_LARGE = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
    pos_embed_max_size=192, qk_norm="rms_norm",
)
FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLUX_SCHNELL = {**FLUX_DEV, "guidance_embeds": False}  # schnell is timestep-distilled: no guidance embedding
TRANSFORMERS = {"sd35m": SD35_MEDIUM, "sd35l": SD35_LARGE, "flux-dev": FLUX_DEV, "flux-schnell": FLUX_SCHNELL}
# The 16-channel VAE of SD3/SD3.5 and FLUX.1 (same architecture, no quant convs; own latent statistics).
VAE16 = dict(VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
VAE16_STATS = {"sd3": dict(scaling_factor=1.5305, shift_factor=0.0609),
               "flux": dict(scaling_factor=0.3611, shift_factor=0.1159)}
# T5 v1.1 XXL encoder (google/t5-v1_1-xxl), SD3's text_encoder_3 and FLUX's text_encoder_2.
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
              is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)
# scheduler/scheduler_config.json: SD3.5 shifts sigmas by 3; FLUX.1-dev shifts by image size, schnell not at all.
FLOW_SCHEDULERS = {
    "sd35m": dict(shift=3.0), "sd35l": dict(shift=3.0),
    "flux-dev": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                     max_image_seq_len=4096),
    "flux-schnell": dict(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                         base_image_seq_len=256, max_image_seq_len=4096),
}
# The 2026 families' transformers at real size (the release configs aifeedback/zoo's tiny builders record:
# zoo/tiny_flux2.py REAL_TRANSFORMERS, tiny_qwen_image.py, tiny_z_image.py): name -> (aif family, diffusers class).
FAMILY_TRANSFORMERS = {
    "flux2-dev": ("flux2", "Flux2Transformer2DModel"), "flux2-klein-4b": ("flux2", "Flux2Transformer2DModel"),
    "qwen-image": ("qwen-image", "QwenImageTransformer2DModel"), "z-image": ("z-image", "ZImageTransformer2DModel"),
}
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 timestep_spacing="leading", prediction_type="epsilon")


def text_config(**kw: Any):
    """A CLIPTextConfig with the released vocabulary, 77 positions and the released token ids."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1, **kw)


def build_pipeline(family: str, device: str = "cpu", dtype: str = "float16", fp16_vae: bool = False) -> Any:
    """The SDXL ("sdxl"), SD1.5 ("sd15") or flow-matching (TRANSFORMERS) pipeline at real size, random weights.

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

    if family in TRANSFORMERS:
        return flow_pipeline(family, device, dtype)
    if family not in ("sdxl", "sd15"):
        raise ValueError(f"unknown family '{family}'; use one of sdxl, sd15, {', '.join(TRANSFORMERS)}")
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


def build_transformer(name: str, device: str = "cpu", dtype: Any = None) -> Any:
    """The SD3.5 (SD3Transformer2DModel) or FLUX.1 (FluxTransformer2DModel) denoiser of TRANSFORMERS[name], or a
    FAMILY_TRANSFORMERS one, initialised directly in `dtype` (default float32)."""
    import diffusers
    import torch

    if name in FAMILY_TRANSFORMERS:
        cls, config = getattr(diffusers, FAMILY_TRANSFORMERS[name][1]), family_parts_configs(name)["transformer"]
    else:
        cls = diffusers.FluxTransformer2DModel if name.startswith("flux") else diffusers.SD3Transformer2DModel
        config = TRANSFORMERS[name]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        with torch.device(device):
            return cls(**config)
    finally:
        torch.set_default_dtype(default)


def family_parts_configs(name: str) -> dict[str, Any]:
    """The release configs of a FAMILY_TRANSFORMERS model's transformer, VAE and text encoder (FLUX.2 [dev]'s Mistral
    Small 3.1 is not recorded: its count is README's)."""
    from aifeedback.zoo import tiny_flux2, tiny_qwen_image, tiny_z_image

    qwen3_4b = tiny_z_image.REAL_TEXT_ENCODER  # Z-Image's and FLUX.2 [klein] 4B's text encoder: Qwen3-4B
    return {
        "flux2-dev": dict(transformer=tiny_flux2.REAL_TRANSFORMERS["dev"], vae={}),
        "flux2-klein-4b": dict(transformer=tiny_flux2.REAL_TRANSFORMERS["klein-4b"], vae={}, text_encoder=qwen3_4b),
        "qwen-image": dict(transformer=tiny_qwen_image.REAL_TRANSFORMER, vae=tiny_qwen_image.REAL_VAE,
                           text_encoder=tiny_qwen_image.REAL_TEXT_ENCODER),
        "z-image": dict(transformer=tiny_z_image.REAL_TRANSFORMER, vae=dict(VAE16, **tiny_z_image.FLUX_VAE),
                        text_encoder=qwen3_4b),
    }[name]


def family_parts(name: str, device: str = "meta") -> dict[str, Any]:
    """A FAMILY_TRANSFORMERS model's transformer, VAE and text encoder (as its pipeline loads it: FLUX.2 [klein]
    Qwen3ForCausalLM, Z-Image Qwen3Model, Qwen-Image the whole Qwen2.5-VL) with random weights; FLUX.2 [dev]
    without its text encoder."""
    import diffusers
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3Model,
    )

    configs = family_parts_configs(name)
    vae_cls = {"flux2": "AutoencoderKLFlux2", "qwen-image": "AutoencoderKLQwenImage", "z-image": "AutoencoderKL"}
    parts = {"transformer": build_transformer(name, device)}
    with torch.device(device):
        parts["vae"] = getattr(diffusers, vae_cls[FAMILY_TRANSFORMERS[name][0]])(**configs["vae"])
        if name == "qwen-image":
            parts["text_encoder"] = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**configs["text_encoder"]))
        elif "text_encoder" in configs:
            cls = Qwen3ForCausalLM if name.startswith("flux2") else Qwen3Model
            parts["text_encoder"] = cls(Qwen3Config(**configs["text_encoder"]))
    return parts


def flow_pipeline(name: str, device: str = "cpu", dtype: str = "bfloat16") -> Any:
    """StableDiffusion3Pipeline (sd35m, sd35l) or FluxPipeline (flux-dev, flux-schnell) at real size, random weights.

    The T5 tokenizer's vocabulary cannot be built offline (the hub's spiece.model), so tokenizer_2/_3 is None: the
    pipeline holds every network at its real size (what the memory and speed figures need) and is driven with
    precomputed prompt embeddings.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from aifeedback.families.loading import torch_dtype
    from aifeedback.zoo.tokenizer import clip_tokenizer

    flux = name.startswith("flux")
    transformer = build_transformer(name, device)
    with torch.device(device):
        vae = AutoencoderKL(**VAE16, sample_size=1024, **VAE16_STATS["flux" if flux else "sd3"])
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        clip_l = (CLIPTextModel if flux else CLIPTextModelWithProjection)(text_config(**TEXT_L))
        clip_g = None if flux else CLIPTextModelWithProjection(text_config(**TEXT_BIGG))
    scheduler = FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULERS[name])
    if flux:
        pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip_l, tokenizer=clip_tokenizer(),
                            text_encoder_2=t5, tokenizer_2=None, transformer=transformer)
    else:
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip_l, tokenizer=clip_tokenizer(),
            text_encoder_2=clip_g, tokenizer_2=clip_tokenizer("!"), text_encoder_3=t5, tokenizer_3=None,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=torch_dtype(dtype))
