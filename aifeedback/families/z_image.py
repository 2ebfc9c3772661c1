"""Z-Image (Tongyi-MAI/Z-Image, Z-Image-Turbo): a single-stream `ZImageTransformer2DModel` trained by flow matching
(families/flow.py), as diffusers' examples/dreambooth/train_dreambooth_lora_z_image.py trains it and `ZImagePipeline`
conditions it:
- text: each prompt wrapped in Qwen3's chat template (user turn, generation prompt, thinking on), tokenised padded to
  512 tokens, and Qwen3's SECOND-TO-LAST hidden state; the pipeline keeps each prompt's unpadded tokens only (a list of
  variable-length tensors), so `encode_prompts` returns the padded states (`embeds`) with their attention `mask`, and
  `predict` cuts them back to that list (fixed shapes for batches and `aif cache`);
- latents: the FLUX.1 VAE's `(z - shift) * scale` of the posterior's MODE (the script encodes `latent_dist.mode()`),
  each image passed as a (C, 1, h, w) tensor in a list (the transformer patchifies 2x2 itself and builds the position
  ids: captions along the first axis, the image after them);
- timestep: the script's default weighting "none" (uniform u, index int(u * 1000), the scheduler's sigma, unweighted
  loss), x_t = (1 - sigma) x0 + sigma noise, target noise - x0; the transformer takes (1000 - t) / 1000 (1 = clean)
  and predicts x0 - noise, so the prediction is negated ("z-Image negates the prediction");
- sampling: the pipeline's defaults, 50 steps with classifier-free guidance 5.0 (Z-Image-Turbo: see resolve.py).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ZImagePipeline

from aifeedback.errors import AifError
from aifeedback.families.base import TextEncoders, encode_images
from aifeedback.families.flow import FlowFamily


class ZImage(FlowFamily):
    resolution = 1024  # ZImagePipeline draws 1024 x 1024 by default; the script's --resolution default is 512
    guidance = 5.0  # ZImagePipeline's default guidance_scale
    steps = 50  # ZImagePipeline's default num_inference_steps
    lora_pipeline = ZImagePipeline
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")  # train_dreambooth_lora_z_image.py's default target modules
    vae_fp16_safe = False  # the FLUX.1 VAE asks for upcasting (force_upcast)
    weighting_scheme = "none"  # the script's default: uniform timesteps, unweighted loss
    linspace_sigmas = True  # the pipeline samples on linspace(1, 1/steps, steps), shifted (sampling_schedule)
    max_sequence_length = 512  # ZImagePipeline's and the script's default

    @classmethod
    def matches(cls, config: Any) -> bool:
        # ZImageTransformer2DModel's own fields (Lumina2's transformer also has cap_feat_dim, but one patch_size); the
        # Omni variant (SigLIP features) samples with another pipeline
        return "all_patch_size" in config and "cap_feat_dim" in config and not config.get("siglip_feat_dim")

    def text_encoders(self, pipe: Any) -> TextEncoders:
        return TextEncoders([pipe.tokenizer], [pipe.text_encoder])

    @torch.no_grad()
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        (tok,), (encoder,) = text.tokenizers, text.encoders
        chats = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True,
                                         enable_thinking=True) for c in captions]
        inputs = tok(chats, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                     return_tensors="pt")
        mask = inputs.attention_mask.to(text.device).bool()
        states = encoder(input_ids=inputs.input_ids.to(text.device), attention_mask=mask,
                         output_hidden_states=True).hidden_states[-2]
        return {"embeds": states, "mask": mask}

    def encode_images(self, vae: Any, pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(vae, pixels, sample=False)

    def predict(self, model: Any, noisy: torch.Tensor, t: torch.Tensor, prompts: dict[str, torch.Tensor],
                micro: torch.Tensor | None) -> torch.Tensor:
        h, w = noisy.shape[-2:]
        if h % 2 or w % 2:
            raise AifError(f"Z-Image's transformer cuts latents into 2x2 patches: these are {h}x{w}, an odd side. Fix: "
                           "pass a --resolution that is a multiple of 16 (the VAE's 8 x the patch's 2), e.g. 1024.")
        captions = [e[m] for e, m in zip(prompts["embeds"], prompts["mask"].bool(), strict=True)]
        out = model(list(noisy.unsqueeze(2).unbind(0)), (1000 - t) / 1000, captions, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)
