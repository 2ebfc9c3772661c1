"""FLUX.1 (dev, schnell): a `FluxTransformer2DModel` trained by flow matching (families/flow.py), as diffusers'
train_dreambooth_lora_flux.py trains it and `FluxPipeline` conditions it:
- text: CLIP-L's pooled output (`pooled`, 77 tokens in) and T5's last hidden state over 512 tokens (`embeds`;
  FluxPipeline's default max_sequence_length), with all-zero text position ids;
- latents: the 16-channel VAE's `(z - shift) * scale`, packed into 2x2 patches (h/2 * w/2 tokens of 64 channels)
  with their (0, row, column) image position ids; the prediction is unpacked back, so the loss is the plain MSE;
- timestep: sigma (the scheduler's timestep / 1000), drawn uniformly (the script's default weighting "none"),
  sigmas unshifted for dev (dynamic shifting only applies when sampling) and schnell (shift 1);
- FLUX.1-dev's guidance embedding: the distilled guidance scale as a number per image, 3.5 in training (the
  script's --guidance_scale default); schnell has none.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FluxPipeline

from aifeedback.errors import AifError
from aifeedback.families.base import TextEncoders, tokenize
from aifeedback.families.flow import FlowFamily

TRAIN_GUIDANCE = 3.5  # train_dreambooth_lora_flux.py --guidance_scale default (FLUX.1-dev is guidance-distilled)


class Flux(FlowFamily):
    resolution = 1024
    guidance = 3.5  # FluxPipeline's default guidance_scale (an embedded number for dev; schnell ignores it)
    steps = 28  # FluxPipeline's default num_inference_steps
    lora_pipeline = FluxPipeline
    # train_dreambooth_lora_flux.py's default target modules: attention of both streams and the double blocks'
    # feed-forwards
    lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2")
    vae_fp16_safe = False  # the FLUX VAE's config asks for upcasting (force_upcast); FLUX runs in bf16 anyway
    weighting_scheme = "none"  # the FLUX script's default: uniform timesteps, unweighted loss
    linspace_sigmas = True  # the pipeline samples on linspace(1, 1/steps, steps), shifted (sampling_schedule)
    t5_length = 512  # FluxPipeline's default max_sequence_length

    @classmethod
    def matches(cls, config: Any) -> bool:
        # FluxTransformer2DModel's own fields (SD3's transformer has neither; FLUX.2's has no pooled projection)
        return "num_single_layers" in config and "guidance_embeds" in config and "pooled_projection_dim" in config

    def text_encoders(self, pipe: Any) -> TextEncoders:
        if pipe.text_encoder_2 is None:
            raise ValueError("this FLUX pipeline was loaded without its T5 encoder (text_encoder_2=None); training "
                             "and rendering here need it: load the model with both text encoders")
        return TextEncoders([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2])

    @torch.no_grad()
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        clip_tok, t5_tok = text.tokenizers
        clip, t5 = text.encoders
        pooled = clip(tokenize(clip_tok, captions).to(text.device), output_hidden_states=False).pooler_output
        ids = t5_tok(captions, padding="max_length", max_length=self.t5_length, truncation=True,
                     return_length=False, return_overflowing_tokens=False, return_tensors="pt").input_ids
        embeds = t5(ids.to(text.device), output_hidden_states=False)[0]
        return {"embeds": embeds, "pooled": pooled.to(embeds.dtype)}

    def predict(self, model: Any, noisy: torch.Tensor, t: torch.Tensor, prompts: dict[str, torch.Tensor],
                micro: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = noisy.shape
        if h % 2 or w % 2:
            raise AifError(f"FLUX packs 2x2 patches of latents: these are {h}x{w}, an odd side. Fix: pass a "
                           "--resolution that is a multiple of 16 (the VAE's 8 x the patch's 2), e.g. 1024.")
        embeds = prompts["embeds"]
        packed = FluxPipeline._pack_latents(noisy, n, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, noisy.device, embeds.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=embeds.dtype)
        guidance = None
        if denoiser_config(model).guidance_embeds:
            guidance = torch.full((n,), TRAIN_GUIDANCE, device=noisy.device)
        out = model(hidden_states=packed, timestep=t / 1000, guidance=guidance, pooled_projections=prompts["pooled"],
                    encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        # back to (n, c, h, w): _unpack_latents takes pixel sizes and the VAE factor; factor 1 makes them latent sizes
        return FluxPipeline._unpack_latents(out, h, w, 1)

    def pipeline_latents(self, pipe: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # FluxPipeline returns packed latents for output_type="latent"; it unpacks them itself before decoding
        return FluxPipeline._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def denoiser_config(model: Any) -> Any:
    """The transformer's config through the wrappers training puts around it (DDP, FSDP, torch.compile)."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise ValueError(f"no transformer config found inside {type(model).__name__}")
        model = inner
    return model.config
