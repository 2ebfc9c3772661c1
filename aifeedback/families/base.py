"""The model-family extension point: what differs between text-to-image model families, behind one interface.

A family says how to recognise its denoiser, how prompts become the denoiser's conditioning, how training noises a
latent and what the denoiser is trained to predict, which layers LoRA adapts and which diffusers pipeline writes the
LoRA file, and its defaults. The training loop, sampling and storage only talk to `Family`; adding a family (SD3,
FLUX: flow-matching transformers) is one module with a `Family` subclass, registered in `families/__init__.py`.

`UNetFamily` holds what the DDPM-style UNet families (SD1.5, SDXL) share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from aifeedback.families.quantize import place


@dataclass
class TextEncoders:
    """The frozen text side of a pipeline: its tokenizers and encoders, in the family's order."""

    tokenizers: list[Any]
    encoders: list[Any]

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "TextEncoders":
        for enc in self.encoders:
            place(enc, device, dtype).requires_grad_(False).eval()  # a quantized encoder only moves
        return self

    @property
    def device(self) -> torch.device:
        return self.encoders[0].device


class Family(ABC):
    """One family of text-to-image models. Subclasses set the facts and implement the methods; instances are
    stateless (models and schedulers are passed in), so one instance per registry entry serves every pipeline."""

    denoiser: ClassVar[str]  # the pipeline component that is trained ("unet", "transformer")
    resolution: ClassVar[int]  # native resolution in pixels (the training default)
    guidance: ClassVar[float]  # diffusers' default classifier-free guidance scale
    steps: ClassVar[int] = 50  # diffusers' default number of sampling steps
    lora_targets: ClassVar[tuple[str, ...]]  # module names LoRA adapts in the denoiser
    lora_pipeline: ClassVar[Any]  # diffusers pipeline class whose save_lora_weights writes the LoRA file
    vae_fp16_safe: ClassVar[bool] = True  # False: the stock VAE overflows in fp16 (keep it in fp32)

    @classmethod
    @abstractmethod
    def matches(cls, config: Any) -> bool:
        """Whether a denoiser's config belongs to this family."""

    @abstractmethod
    def text_encoders(self, pipe: Any) -> TextEncoders:
        """The pipeline's tokenizers and text encoders."""

    @abstractmethod
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        """Prompt conditioning, every tensor batch-first with one row per caption."""

    @abstractmethod
    def predict(self, model: Any, noisy: torch.Tensor, t: torch.Tensor, prompts: dict[str, torch.Tensor],
                micro: torch.Tensor | None) -> torch.Tensor:
        """The denoiser's output for noisy latents at timesteps t; `micro` holds each image's
        (orig_h, orig_w, crop_top, crop_left, target_h, target_w) for families that condition on it."""

    @abstractmethod
    def noise_scheduler(self, pipe: Any) -> Any:
        """The training noise schedule of this pipeline."""

    @abstractmethod
    def training_noise(self, scheduler: Any, latents: torch.Tensor, groups: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, target) for one training step. `latents` are `groups` stacked blocks of the
        same items (DPO: winners, then losers); every block gets the same noise and timesteps."""

    def sampling_inputs(self, pipe: Any, n: int, width: int, height: int) -> dict[str, Any]:
        """What the family's diffusers pipeline takes, besides prompts and sampling settings, to draw n images of
        width x height from noise (text-to-image pipelines: the size)."""
        return {"width": width, "height": height}

    def loss_weights(self, scheduler: Any, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights of the denoising error at timesteps t (shape (N,)), or None for uniform weights."""
        return None

    def pipeline_latents(self, pipe: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """What the pipeline returns with output_type="latent" -> (N, C, h, w) latents of an image height x width
        (FLUX returns them packed)."""
        return latents

    def guidance_inputs(self, pipe: Any, guidance: float, negative_prompt: str, n: int) -> dict[str, Any]:
        """`pipe`'s keyword arguments for classifier-free guidance at scale `guidance` with `negative_prompt` for n
        prompts; an empty negative prompt keeps the pipeline's own default (SDXL: zero embeddings)."""
        return {"guidance_scale": guidance, "negative_prompt": [negative_prompt] * n if negative_prompt else None}

    def encode_images(self, vae: Any, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the latents the denoiser works on."""
        return encode_images(vae, pixels)

    def latent_shape(self, vae_config: Any, resolution: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents `encode_images` gives for a square image of `resolution` px."""
        f = vae_factor(vae_config)
        return latent_channels(vae_config), resolution // f, resolution // f

    def lora_target_modules(self, model: Any) -> list[str]:
        """The `target_modules` LoRA adapts in this denoiser (the family's `lora_targets`; a family whose script
        names modules per block lists them from the model's config)."""
        return list(self.lora_targets)

    def decode_images(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        """Denoiser-space latents -> images in [-1, 1], as the family's pipeline decodes them (the inverse of
        `encode_images`' normalisation, then the VAE's decoder)."""
        return vae.decode(denormalise_latents(vae.config, latents.to(vae.device, vae.dtype)), return_dict=False)[0]

    def vae_dtype(self, weight_dtype: torch.dtype, custom_vae: bool) -> torch.dtype:
        """The dtype to keep the VAE in when the frozen parts are stored in weight_dtype."""
        if weight_dtype == torch.float16 and not self.vae_fp16_safe and not custom_vae:
            return torch.float32
        return weight_dtype

    def __init__(self, name: str, help: str):
        self.name, self.help = name, help  # from the registry entry (families/__init__.py)

    def __repr__(self) -> str:
        return f"<family {self.name}>"


class UNetFamily(Family):
    """DDPM-style UNet families: the model is a UNet2DConditionModel told apart by its `addition_embed_type`,
    trained on epsilon or v-prediction with a DDPMScheduler built from the model's own scheduler config."""

    denoiser = "unet"
    addition_embed_type: ClassVar[str | None]
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")
    # Training draws timesteps from the lowest fraction of the schedule: all of it, unless the model was trained on
    # low noise levels only (the SDXL refiner).
    train_noise_fraction: ClassVar[float] = 1.0

    @classmethod
    def matches(cls, config: Any) -> bool:
        return "cross_attention_dim" in config and config.get("addition_embed_type") == cls.addition_embed_type

    def noise_scheduler(self, pipe: Any) -> Any:
        return DDPMScheduler.from_config(pipe.scheduler.config)  # keeps the betas and prediction_type

    def training_noise(self, scheduler: Any, latents: torch.Tensor, groups: int, noise_offset: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """noise_offset > 0: offset noise (Guttenberg 2023, "Diffusion with Offset Noise"), as diffusers' training
        scripts add it: noise += offset * randn(N, C, 1, 1), one constant per image and channel, which lets the model
        learn to change an image's overall brightness. Drawn after the noise, only when on (the RNG stream is
        unchanged when off); like the noise, shared by the groups (winner and loser)."""
        n = len(latents) // groups
        noise = torch.randn_like(latents[:n])
        if noise_offset:
            noise = noise + noise_offset * torch.randn(*noise.shape[:2], *[1] * (noise.dim() - 2),
                                                       device=noise.device, dtype=noise.dtype)
        noise = noise.repeat(groups, *[1] * (latents.dim() - 1))
        high = round(scheduler.config.num_train_timesteps * self.train_noise_fraction)
        t = torch.randint(0, high, (n,), device=latents.device).repeat(groups)
        return scheduler.add_noise(latents, noise, t), t, training_target(scheduler, latents, noise, t)

    def predict(self, model: Any, noisy: torch.Tensor, t: torch.Tensor, prompts: dict[str, torch.Tensor],
                micro: torch.Tensor | None) -> torch.Tensor:
        return model(noisy, t, prompts["embeds"], **self.added_conditioning(prompts, micro)).sample

    def added_conditioning(self, prompts: dict[str, torch.Tensor], micro: torch.Tensor | None) -> dict[str, Any]:
        """Extra UNet keyword arguments beyond the cross-attention context (none for plain text conditioning)."""
        return {}


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_images(vae: Any, pixels: torch.Tensor, sample: bool = True) -> torch.Tensor:
    """Images in [-1, 1], (N, 3, H, W) -> denoiser-space latents (N, C, H/f, W/f), normalised as the VAE declares.

    Uses a sample of the posterior (as the diffusers and Diffusion-DPO training scripts do); the sample draws from
    the global torch RNG, which checkpoints save, so resumes stay exact. sample=False: the posterior's mode (its
    mean; diffusers' Z-Image script), which draws nothing.
    """
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = (dist.sample() if sample else dist.mode()).float()
    # The inverse of denormalise_latents: VAEs that declare per-channel latent statistics are normalised by them;
    # the 16-channel VAEs of SD3 and FLUX declare a shift (diffusers' SD3/FLUX training: (z - shift) * scale).
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        return (latents - shift) * vae.config.scaling_factor
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        mean, std = torch.tensor(mean).view(shape).to(latents), torch.tensor(std).view(shape).to(latents)
        return (latents - mean) * vae.config.scaling_factor / std
    return latents * vae.config.scaling_factor


def denormalise_latents(config: Any, z: torch.Tensor) -> torch.Tensor:
    """The inverse of encode_images' normalisation, as the diffusers pipelines undo it before decoding."""
    shift = getattr(config, "shift_factor", None)
    if shift is not None:  # the 16-channel SD3/FLUX VAEs
        return z / config.scaling_factor + shift
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        c = z.shape[1]
        std, mean = torch.tensor(std).view(1, c, 1, 1).to(z), torch.tensor(mean).view(1, c, 1, 1).to(z)
        return z * std / config.scaling_factor + mean
    return z / config.scaling_factor


def training_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a DDPM-style UNet is trained to predict: the noise (epsilon) or the velocity (v_prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type '{kind}' in the model's scheduler config (epsilon or v_prediction)")


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, arXiv 2303.09556) per sample at timesteps t, as diffusers'
    examples/text_to_image/train_text_to_image.py computes them: snr = alpha_bar / (1 - alpha_bar)
    (`diffusers.training_utils.compute_snr`), weight = min(snr, gamma) / snr for epsilon-prediction and
    min(snr, gamma) / (snr + 1) for v-prediction (the v error is (snr + 1) times the epsilon error, so both weigh
    the x0 error by min(snr, gamma)). Needs a DDPM-style schedule (`alphas_cumprod`)."""
    snr = compute_snr(scheduler, t)
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"min-SNR weighting: unsupported prediction_type '{kind}' (epsilon or v_prediction)")


def vae_factor(vae_config: Any) -> int:
    """Spatial downsampling factor of a VAE (8 for the real models, 2 for the tiny ones); the video-style VAEs
    (Qwen-Image's AutoencoderKLQwenImage) downsample once per `temperal_downsample` entry, as their pipelines count."""
    if "temperal_downsample" in vae_config:
        return 2 ** len(vae_config.temperal_downsample)
    return 2 ** (len(vae_config.block_out_channels) - 1)


def latent_channels(vae_config: Any) -> int:
    """The number of channels of a VAE's latents (the video-style VAEs call it z_dim)."""
    return vae_config.z_dim if "z_dim" in vae_config else vae_config.latent_channels


def time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]) -> list[int]:
    """One image's micro-conditioning record: (orig_h, orig_w, crop_top, crop_left, target_h, target_w). The data
    side records it for every image; families that condition on it (SDXL) pass it to the denoiser."""
    return [*original_hw, *crop_top_left, *target_hw]
