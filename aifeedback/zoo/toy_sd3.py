"""The toy world in flow-matching form: `toy-sd3`, a StableDiffusion3Pipeline pretrained on the coloured discs of
zoo/toy.py, so Diffusion-DPO can be seen to work on a flow-matching transformer (the SD3/FLUX objective) on a CPU.

Same world and data generator as toy-sd15 (`toy.synthetic_batch`, 108 pretraining captions, 24 held out), same
near-identity VAE (`toy.train_vae`: the 3x8x8 latent is the picture, scaling 1, shift 0), so the transformer does
flow matching in pixel space. The denoiser is a real `SD3Transformer2DModel` (patch 1: 64 image tokens, MMDiT joint
attention with the text tokens), trained with the rectified-flow objective the sd3 family trains with
(families/flow.py): x_t = (1 - sigma) x0 + sigma noise, target noise - x0, sigma uniform in [0, 1] (every level
the 10-step sampler visits is seen equally; the sd3 family's logit-normal density rarely draws the sigma ~ 1 where
the first sampling step decides the colours). The two CLIP-like encoders are trained with it (as toy-sd15 trains its
text encoder; with them frozen and random, both colours were right in only a third of the images), through the sd3
family's own `encode_prompts` (the pipeline's path); the tiny T5 stays frozen and random. The CLIP tokenizers are cut
to 16 tokens (a toy caption has 9 with its start and end marks) to keep the joint attention short; T5 keeps the
pipeline's 256. Measured (one thread, AMD EPYC): about 110 s of CPU time for the build; on the 24 held-out captions
(2 seeds, 10 Euler steps, no guidance) both colours are right in 94% of the images, 99% on pretraining captions.

Deterministic on one CPU type (fixed seeds, one generator, one thread), cached like every zoo model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from aifeedback.families import get_family
from aifeedback.families.base import TextEncoders
from aifeedback.zoo.tokenizer import BOS, EOS, VOCAB_SIZE, clip_tokenizer, t5_tokenizer
from aifeedback.zoo.toy import _vae, synthetic_batch, train_vae
from aifeedback.zoo.toy_world import SIZE

CLIP_TOKENS = 16  # a toy caption is 7 words + start and end marks


def _clip(seed: int) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, hidden_size=16,
        intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=CLIP_TOKENS,
        projection_dim=16, hidden_act="quick_gelu",
    ))


def _t5(vocab: int) -> T5EncoderModel:
    torch.manual_seed(4)
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))


def _transformer() -> SD3Transformer2DModel:
    torch.manual_seed(2)
    return SD3Transformer2DModel(
        sample_size=SIZE, patch_size=1, in_channels=3, out_channels=3, num_layers=3, attention_head_dim=16,
        num_attention_heads=2, caption_projection_dim=32,  # = heads * head dim, as in the real models
        joint_attention_dim=32,  # T5's width; the CLIP states (16 + 16) are zero-padded to it
        pooled_projection_dim=32,  # the two CLIP projections, concatenated
        pos_embed_max_size=SIZE,
    )


def _pipeline() -> StableDiffusion3Pipeline:
    tokenizers = [clip_tokenizer(), clip_tokenizer("!")]
    for tok in tokenizers:
        tok.model_max_length = CLIP_TOKENS
    vae = _vae()
    vae.register_to_config(shift_factor=0.0)  # the SD3 pipeline decodes z / scaling + shift
    return StableDiffusion3Pipeline(
        transformer=_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae,
        text_encoder=_clip(0), tokenizer=tokenizers[0], text_encoder_2=_clip(1), tokenizer_2=tokenizers[1],
        text_encoder_3=_t5(len(t5_tokenizer())), tokenizer_3=t5_tokenizer(),
    )


def train_denoiser(pipe, steps: int, generator: torch.Generator, batch: int = 32, lr: float = 3e-3,
                   caption_dropout: float = 0.1) -> float:
    """Flow matching on toy images (velocity target, uniform sigma): the transformer and the two CLIP encoders
    together (as toy-sd15 trains its text encoder), T5 frozen. Returns the last loss."""

    family = get_family("sd3")
    text = TextEncoders([pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3],
                        [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3])
    # The family's own prompt encoding (the pipeline's path), without its no_grad so the CLIP encoders learn.
    encode = family.encode_prompts.__wrapped__
    params = [p for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    # Cosine decay to zero, as the toy UNet: the last steps at a small learning rate clean up the samples.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / max(steps, 1))))
    loss = torch.tensor(0.0)
    for _ in tqdm(range(steps), desc="toy-sd3 (first use): pretraining transformer + CLIP encoders", leave=False,
                  dynamic_ncols=True):
        x, caps = synthetic_batch(batch, generator)
        drop = torch.rand(batch, generator=generator) < caption_dropout
        caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
        with torch.no_grad():
            latents = pipe.vae.encode(x).latent_dist.mean  # scaling 1, shift 0: the latent is the picture
        noise = torch.randn(latents.shape, generator=generator)
        sigma = torch.rand(batch, generator=generator).view(-1, 1, 1, 1)
        noisy = (1 - sigma) * latents + sigma * noise
        t = sigma.flatten() * pipe.scheduler.config.num_train_timesteps  # the pipeline's timestep = sigma * 1000
        pred = family.predict(pipe.transformer, noisy, t, encode(family, text, caps), None)
        loss = torch.nn.functional.mse_loss(pred, noise - latents)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return loss.item()


def build_toy_sd3(out: Path, steps: int = 600, vae_steps: int = 200, lr: float = 3e-3, seed: int = 0) -> None:
    """Build and pretrain the toy StableDiffusion3Pipeline into `out` (deterministic for a given seed and CPU type)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in a fixed order: the same weights whatever the core count
    try:
        torch.manual_seed(seed)
        pipe = _pipeline()
        pipe.text_encoder_3.requires_grad_(False).eval()
        generator = torch.Generator().manual_seed(seed)
        vae_loss = train_vae(pipe.vae, vae_steps, generator)
        pipe.vae.requires_grad_(False)
        flow_loss = train_denoiser(pipe, steps, generator, lr=lr)
    finally:
        torch.set_num_threads(threads)
    if not (math.isfinite(vae_loss) and math.isfinite(flow_loss)):
        raise RuntimeError(f"toy-sd3 pretraining diverged (vae loss {vae_loss}, flow loss {flow_loss})")
    for module in (pipe.vae, pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
        module.eval()
    pipe.save_pretrained(out)
