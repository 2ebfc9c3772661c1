"""The SDXL refiner (stabilityai/stable-diffusion-xl-refiner-1.0): the SDXL UNet layout conditioned on the second
text encoder alone (OpenCLIP bigG: its penultimate hidden state as context, 1280 channels, and its pooled
projection) and five time ids per image: original size, crop and an aesthetic score instead of the target size
(diffusers' StableDiffusionXLImg2ImgPipeline with `requires_aesthetics_score`).

Training conditions every image on the aesthetic score diffusers samples with by default, 6.0 (winner and loser
alike: the preference is in the pairs, not in the score); sampling leaves the pipeline's own 6.0 and its 2.5 for the
unconditional (negative) branch. The refiner was trained on the low-noise end of the schedule only (SDXL paper,
Podell et al. 2023, sec. 2.5: "the first 200 (discrete) noise scales"), so training draws timesteps from the lowest
20%. Sampling goes through the refiner's own pipeline, StableDiffusionXLImg2ImgPipeline, from pure noise (an empty
latent at strength 1.0) so that generate/sample/eval and validation need no input images; that is the plumbing of
the loop, not the refiner's use, which is to refine another model's images at low strength.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

from aifeedback.families.base import TextEncoders
from aifeedback.families.sdxl import SDXL

AESTHETIC_SCORE = 6.0  # diffusers' default `aesthetic_score` of StableDiffusionXLImg2ImgPipeline (negative: 2.5)


class SDXLRefiner(SDXL):
    lora_pipeline = StableDiffusionXLImg2ImgPipeline
    train_noise_fraction = 0.2
    refiner = True

    def text_encoders(self, pipe: Any) -> TextEncoders:
        return TextEncoders([pipe.tokenizer_2], [pipe.text_encoder_2])

    def added_conditioning(self, prompts: dict[str, torch.Tensor], micro: torch.Tensor | None) -> dict[str, Any]:
        if micro is None:
            raise ValueError("the SDXL refiner needs each image's time ids (original size, crop)")
        size_and_crop = micro[:, :4]  # the data records (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
        score = torch.full_like(size_and_crop[:, :1], AESTHETIC_SCORE)
        return super().added_conditioning(prompts, torch.cat([size_and_crop, score], dim=1))

    def sampling_inputs(self, pipe: Any, n: int, width: int, height: int) -> dict[str, Any]:
        f = pipe.vae_scale_factor
        empty = torch.zeros(n, pipe.unet.config.in_channels, height // f, width // f, device=pipe.device,
                            dtype=pipe.unet.dtype)
        return {"image": empty, "strength": 1.0}
