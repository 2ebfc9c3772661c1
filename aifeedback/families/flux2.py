"""FLUX.2 ([dev] and [klein]): a `Flux2Transformer2DModel` trained by flow matching (families/flow.py), as diffusers'
examples/dreambooth/train_dreambooth_lora_flux2.py and _flux2_klein.py train it and `Flux2Pipeline` /
`Flux2KleinPipeline` condition it:
- text: one encoder, several of its hidden layers stacked per token (B, L, 3 x width), no mask and no pooled vector:
  [dev] Mistral Small 3 (Mistral3ForConditionalGeneration) over its chat template with the pipeline's system message,
  hidden states 10, 20, 30; [klein] Qwen3 over its chat template (thinking off), hidden states 9, 18, 27; 512 tokens;
  text position ids (0, 0, 0, token) - both computed by the pipelines' own static helpers;
- latents: the posterior's MODE (the scripts' `latent_dist.mode()`), 2x2-patchified to 4x the VAE's channels
  (32 -> 128) and normalised by the VAE's batch-norm running statistics; the transformer takes them flattened to
  (B, h*w, C) tokens with (0, row, column, 0) position ids, and its output is scattered back;
- timestep: the scripts' default weighting "none" (uniform u, index int(u * 1000), the scheduler's unshifted sigma),
  x_t = (1 - sigma) x0 + sigma noise, target noise - x0; the transformer takes t / 1000;
- [dev]'s guidance embedding: 3.5 in training (the script's --guidance_scale default); [klein] has none;
- sampling: the pipelines' defaults: 50 steps, guidance 4.0 (dev: the embedded value; klein base: classifier-free
  guidance against the empty prompt); the distilled [klein] models in resolve.py.
The klein script reads Mistral's layers (10, 20, 30) by default (its --text_encoder_out_layers is the dev script's);
Flux2KleinPipeline samples with (9, 18, 27), so this family conditions training as the pipeline does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

from aifeedback.errors import AifError
from aifeedback.families.base import TextEncoders
from aifeedback.families.flow import FlowFamily
from aifeedback.families.flux import denoiser_config

TRAIN_GUIDANCE = 3.5  # train_dreambooth_lora_flux2.py --guidance_scale default ([dev] is guidance-distilled)
DEV_LAYERS = (10, 20, 30)  # Flux2Pipeline's text_encoder_out_layers
KLEIN_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers


class Flux2(FlowFamily):
    resolution = 1024  # the pipelines' default_sample_size 128 x the 8x VAE
    guidance = 4.0  # both pipelines' default guidance_scale
    steps = 50  # both pipelines' default num_inference_steps
    lora_pipeline = Flux2Pipeline  # Flux2LoraLoaderMixin: the one LoRA file format both pipelines load
    # the scripts' default target modules: every attention projection of the double blocks and the single blocks'
    # fused QKV+MLP input; the single blocks' output projections are listed per block (lora_target_modules)
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj")
    vae_fp16_safe = False  # FLUX.2 runs in bf16; the VAE is kept out of fp16 like FLUX.1's
    weighting_scheme = "none"  # the scripts' default: uniform timesteps, unweighted loss
    linspace_sigmas = True
    max_sequence_length = 512  # the pipelines' and the scripts' default

    @classmethod
    def matches(cls, config: Any) -> bool:
        # Flux2Transformer2DModel's own field (FLUX.1's transformer has pooled_projection_dim instead)
        return "timestep_guidance_channels" in config and "num_single_layers" in config

    def lora_target_modules(self, model: Any) -> list[str]:
        # the scripts add f"single_transformer_blocks.{i}.attn.to_out" for i in range(48) ([dev]) / range(24) (klein):
        # every single block (a plain "attn.to_out" would also name the double blocks' ModuleList)
        singles = denoiser_config(model).num_single_layers
        return [*self.lora_targets, *(f"single_transformer_blocks.{i}.attn.to_out" for i in range(singles))]

    def sampling_schedule(self, config: Any, image_seq_len: int, steps: int) -> dict[str, Any]:
        # both FLUX.2 pipelines: linspace sigmas, mu from diffusers' empirical fit over image size and step count
        return {**super().sampling_schedule(config, image_seq_len, steps),
                "mu": compute_empirical_mu(image_seq_len, steps)}

    def latent_shape(self, vae_config: Any, resolution: int) -> tuple[int, int, int]:
        c, h, w = super().latent_shape(vae_config, resolution)
        return 4 * c, h // 2, w // 2  # encode_images' 2x2 patchified latents

    def text_encoders(self, pipe: Any) -> TextEncoders:
        return TextEncoders([pipe.tokenizer], [pipe.text_encoder])

    @torch.no_grad()
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        (tok,), (encoder,) = text.tokenizers, text.encoders
        kw = dict(device=text.device, max_sequence_length=self.max_sequence_length)
        if encoder.config.model_type == "qwen3":
            embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(encoder, tok, list(captions),
                                                                 hidden_states_layers=KLEIN_LAYERS, **kw)
        else:  # Flux2Pipeline's system_message attribute is this constant
            embeds = Flux2Pipeline._get_mistral_3_small_prompt_embeds(
                encoder, tok, list(captions), system_message=SYSTEM_MESSAGE, hidden_states_layers=DEV_LAYERS, **kw)
        return {"embeds": embeds}

    def predict(self, model: Any, noisy: torch.Tensor, t: torch.Tensor, prompts: dict[str, torch.Tensor],
                micro: torch.Tensor | None) -> torch.Tensor:
        embeds = prompts["embeds"]
        img_ids = Flux2Pipeline._prepare_latent_ids(noisy).to(noisy.device)
        txt_ids = Flux2Pipeline._prepare_text_ids(embeds).to(noisy.device)
        guidance = None
        if denoiser_config(model).guidance_embeds:
            guidance = torch.full((len(noisy),), TRAIN_GUIDANCE, device=noisy.device)
        packed = Flux2Pipeline._pack_latents(noisy)
        out = model(hidden_states=packed, timestep=t / 1000, guidance=guidance, encoder_hidden_states=embeds,
                    txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return Flux2Pipeline._unpack_latents_with_ids(out[:, : packed.shape[1]], img_ids)

    @torch.no_grad()
    def encode_images(self, vae: Any, pixels: torch.Tensor) -> torch.Tensor:
        z = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
        if z.shape[-1] % 2 or z.shape[-2] % 2:
            factor = 2 * 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downsampling x the 2x2 patch
            raise AifError(f"FLUX.2 cuts its VAE latents into 2x2 patches: these are {z.shape[-2]}x{z.shape[-1]}, an "
                           f"odd side. Fix: pass a --resolution that is a multiple of {factor} (the VAE's "
                           f"{factor // 2} x the patch's 2), e.g. 1024.")
        mean, std = _bn_stats(vae, z)
        return ((Flux2Pipeline._patchify_latents(z) - mean) / std).float()

    def decode_images(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(vae.device, vae.dtype)
        mean, std = _bn_stats(vae, latents)
        return vae.decode(Flux2Pipeline._unpatchify_latents(latents * std + mean), return_dict=False)[0]

    def pipeline_latents(self, pipe: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if latents.dim() == 3:  # Flux2Pipeline returns its (B, h*w, C) tokens, normalised and patchified
            h, w = (size // (pipe.vae_scale_factor * 2) for size in (height, width))
            return latents.transpose(1, 2).reshape(len(latents), -1, h, w)
        # Flux2KleinPipeline returns the VAE's own latents (denormalised, unpatchified)
        mean, std = _bn_stats(pipe.vae, latents)
        return (Flux2Pipeline._patchify_latents(latents) - mean) / std

    def guidance_inputs(self, pipe: Any, guidance: float, negative_prompt: str, n: int) -> dict[str, Any]:
        if not negative_prompt:
            return {"guidance_scale": guidance}  # both pipelines' own default (klein: the empty prompt)
        if not isinstance(pipe, Flux2KleinPipeline):
            raise AifError("FLUX.2 [dev] is guidance-distilled: Flux2Pipeline takes no negative prompt. Fix: drop "
                           "--negative-prompt (use --guidance for the embedded guidance scale).")
        with torch.no_grad():
            embeds = pipe.encode_prompt([negative_prompt] * n)[0]
        return {"guidance_scale": guidance, "negative_prompt_embeds": embeds}


def _bn_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE batch norm's running mean and standard deviation over patchified channels, shaped (1, C, 1, 1), as the
    pipelines and the scripts normalise with them."""
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return mean.to(like.device, like.dtype), std.to(like.device, like.dtype)
