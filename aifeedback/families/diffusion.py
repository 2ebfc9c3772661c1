"""What differs between SD1.5 and SDXL when training a UNet: prompt encoding, time ids, VAE scaling, targets.

Follows the conventions of the diffusers pipelines, so a UNet trained here samples correctly with
`StableDiffusionPipeline` / `StableDiffusionXLPipeline`:
- SD1.5: one CLIP text encoder, its last hidden state (after the final layer norm) as cross-attention context.
- SDXL: two encoders, the PENULTIMATE hidden state of each (768 + 1280 = 2048 channels, no final layer norm),
  plus the second encoder's pooled projection (`text_embeds`, 1280) and six `time_ids` per image.
- Latents are VAE means (or samples) times the VAE's scaling factor (0.18215 SD1.5, 0.13025 SDXL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TextEncoders:
    """The frozen text side of a pipeline (one encoder for SD1.5, two for SDXL)."""

    family: str
    tokenizers: list[Any]
    encoders: list[Any]

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "TextEncoders":
        from aifeedback.families.loading import family

        fam = family(pipe)
        if fam == "sdxl":
            return cls(fam, [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2])
        return cls(fam, [pipe.tokenizer], [pipe.text_encoder])

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "TextEncoders":
        for enc in self.encoders:
            enc.to(device=device, dtype=dtype).requires_grad_(False).eval()
        return self

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds (B, 77, D), pooled text_embeds (B, D2) for SDXL else None)."""
        device = self.encoders[0].device
        if self.family == "sd15":
            ids = _tokenize(self.tokenizers[0], captions).to(device)
            return self.encoders[0](ids)[0], None
        embeds, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.encoders):
            out = enc(_tokenize(tok, captions).to(device), output_hidden_states=True)
            embeds.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's pooled projection (CLIPTextModelWithProjection.text_embeds)
        return torch.cat(embeds, dim=-1), pooled


def _tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_images(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (N, 3, H, W) -> UNet-space latents (N, C, H/f, W/f), scaled by the VAE's factor.

    Uses a sample of the posterior (as the diffusers and Diffusion-DPO training scripts do); the sample draws from
    the global torch RNG, which checkpoints save, so resumes stay exact.
    """
    latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.sample().float()
    # The inverse of sampling.decode_latents: VAEs that declare per-channel latent statistics are normalised by them.
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        return (latents - torch.tensor(mean).view(shape).to(latents)) * vae.config.scaling_factor / torch.tensor(std).view(shape).to(latents)
    return latents * vae.config.scaling_factor


def noise_scheduler(pipe: Any) -> Any:
    """The training noise schedule: a DDPMScheduler built from the model's own scheduler config (keeps betas and
    prediction_type)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def training_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict: the noise (epsilon) or the velocity (v_prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type '{kind}' in the model's scheduler config (epsilon or v_prediction)")


def time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]) -> list[int]:
    """SDXL micro-conditioning for one image: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
    return [*original_hw, *crop_top_left, *target_hw]


def vae_factor(vae_config: Any) -> int:
    """Spatial downsampling factor of a VAE (8 for the real models, 2 for the tiny ones)."""
    return 2 ** (len(vae_config.block_out_channels) - 1)
