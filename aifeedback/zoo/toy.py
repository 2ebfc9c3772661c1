"""The toy world: a text-to-image model small enough to pretrain on a CPU in a minute, so alignment can be *seen*.

Tiny random models only show that code runs. `toy-sd15` has actually learned something: it is a normal
`StableDiffusionPipeline` folder (real CLIP tokenizer, CLIPTextModel, UNet2DConditionModel, AutoencoderKL, DDIM
scheduler) trained from scratch on synthetic captioned images -- a solid background with one centred disc, both in
named colours, plus a little noise, captioned "a red disc on a blue background". Every stage loads it through the
same code path as SD1.5, and a reward such as redness (mean R - mean(G, B)) gives DPO something real to move.

Prompt fidelity: the disc always covers the centre pixels and never the border ring, so `recognise` reads both
colours back from any image (nearest named colour to the median of each region) and `faithful` compares them with
the caption. Pretraining never sees 24 of the 132 captions (`held_out_captions`, each colour still seen as disc and
as background), so fidelity on those measures whether the model composes what it was told, not what it memorised;
the `toy-fidelity` scorer is the same check, so `aif eval` shows whether a reward was bought with fidelity.

Sizes follow what was found to work (issue 7): diffusion on 3x8x8 latents, a UNet with block_out_channels
(16, 32), one layer per block, cross-attention width 32 (~250k parameters), a 1000-step linear DDPM noise schedule
sampled with 10 DDIM steps, batch 64. Two changes: v-prediction instead of epsilon-prediction, and 600 steps at
lr 3e-3 (cosine decay) instead of 300 at 1e-3. With epsilon and 300 steps the samples were noise (near t=1000 a
small epsilon error is a large image error), though DPO still moved their redness; with v-prediction the model
draws recognisable discs in the colours its captions name, in about 70 s of CPU time (one thread). The text
encoder is trained in the same loop (captions are dropped 10% of the time, so classifier-free guidance works).

The VAE is a tiny AutoencoderKL trained first, in the same build, to be near-identity: its latent is the 8x8
image itself (3 channels, scaling factor 1), pinned by a loss on the encoder mean, and its decoder inverts it.
An exactly-identity AutoencoderKL cannot be set by hand (its GroupNorm layers remove each image's mean colour), and
a different VAE class would break stages that call `vae.encode(x).latent_dist`, so a briefly trained real
AutoencoderKL is the honest choice; its log-variance is pinned very low so `latent_dist.sample()` == the mean.
Because the latent is the picture, the UNet does pixel-space diffusion, which is what made the effect reliable.

The build is deterministic on one CPU type (fixed seeds, one data generator, one thread) and cached by
`aifeedback.zoo.cache.cached_build` (bump its version in the zoo registry when the build changes). It is not identical
across CPU types: their kernels round float sums differently, and training amplifies last-bit differences (tried:
even in float64, two kernel sets of this CPU gave weights 0.3% apart after 60 steps), so the toy model and the
demo's figures vary a little between machines; the README gives the range.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from aifeedback.zoo.tokenizer import BOS, EOS, VOCAB_SIZE, clip_tokenizer
from aifeedback.zoo.toy_world import COLOR_JITTER, COLORS, NOISE, SIZE, all_captions, caption, pretraining_pairs

if TYPE_CHECKING:
    import torch


def synthetic_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """n toy images in [-1, 1] (n, 3, SIZE, SIZE) with their captions (pretraining pairs only), from a Generator."""

    names = list(COLORS)
    table = torch.tensor([COLORS[c] for c in names])
    pairs = torch.tensor(pretraining_pairs())[torch.randint(len(pretraining_pairs()), (n,), generator=generator)]
    disc, bg = pairs[:, 0], pairs[:, 1]
    jitter = lambda: (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * COLOR_JITTER  # noqa: E731
    disc_rgb = table[disc].view(n, 3, 1, 1) + jitter()
    bg_rgb = table[bg].view(n, 3, 1, 1) + jitter()
    # The disc is centred (+- half a pixel), radius 2-2.75 px (pixel centres at i + 0.5): it always covers the
    # CENTRE pixels and never touches the BORDER ring, so those two regions name the colours (see `recognise`).
    centre = SIZE / 2 + torch.rand(n, 2, 1, 1, generator=generator) - 0.5
    radius = 2 + torch.rand(n, 1, 1, generator=generator) * 0.75
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    dist2 = (coords.view(1, SIZE, 1) - centre[:, 0]) ** 2 + (coords.view(1, 1, SIZE) - centre[:, 1]) ** 2
    inside = (dist2 <= radius**2).float().unsqueeze(1)  # (n, 1, H, W)
    img = inside * disc_rgb + (1 - inside) * bg_rgb
    img = img + torch.randn(img.shape, generator=generator) * NOISE
    img = img.clamp(0, 1) * 2 - 1
    return img, [caption(names[d], names[b]) for d, b in zip(disc.tolist(), bg.tolist())]


# ---------------------------------------------------------------------------------------------------------------
# Prompt fidelity: does an image show the colours its caption names?

def recognise(images) -> list[tuple[str, str]]:
    """(disc, background) colour names seen in RGB images: the named colour nearest the median of the centre
    pixels (the middle quarter of each side: 2x2 at 8x8) and of the border ring (1 px at 8x8), where every toy
    image has its disc and its background. images: PIL images, or an array (n, H, W, 3) in [0, 1] (pipeline "np")."""

    x = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) / 255 for im in images]) \
        if isinstance(images, (list, tuple)) else np.asarray(images, dtype=np.float64)
    h, w = x.shape[1:3]
    centre = x[:, h * 3 // 8 : h * 5 // 8, w * 3 // 8 : w * 5 // 8].reshape(len(x), -1, 3)
    ring = np.ones((h, w), dtype=bool)
    ring[max(1, h // 8) : -max(1, h // 8), max(1, w // 8) : -max(1, w // 8)] = False
    names = list(COLORS)
    table = np.asarray([COLORS[c] for c in names])

    def nearest(rgb):  # (n, 3) -> the n nearest colour names
        return [names[i] for i in np.linalg.norm(rgb[:, None] - table, axis=-1).argmin(1)]

    return list(zip(nearest(np.median(centre, axis=1)), nearest(np.median(x[:, ring], axis=1))))


def faithful(images, captions: list[str]) -> list[bool]:
    """Per image: are both the disc and the background colour the ones its toy caption names?"""
    return [caption(d, b) == c for (d, b), c in zip(recognise(images), captions)]


def prompt_fidelity(pipe, captions: list[str], seeds: int = 4, steps: int = 10, seed: int = 0) -> float:
    """Share of images drawn by a toy pipeline (no guidance, as the demo draws) that show their caption's colours."""

    prompts = [c for c in captions for _ in range(seeds)]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=1.0, output_type="np",
                  generator=torch.Generator().manual_seed(seed)).images
    return sum(faithful(images, prompts)) / len(prompts)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline's parts

def _text_encoder():

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, hidden_size=32,
        intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77,
        projection_dim=32, hidden_act="quick_gelu",
    ))


def _unet():

    return UNet2DConditionModel(
        sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8,
    )


def _vae():

    # One block = no resampling: the latent is 3x8x8, like the image.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(32,), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        norm_num_groups=8, sample_size=SIZE, scaling_factor=1.0,
    )
    _pin_logvar(vae)
    return vae


def _pin_logvar(vae) -> None:
    # quant_conv's second half of outputs is the log-variance: make it the constant -30 (the clamp floor), so the
    # encoder is deterministic and latent_dist.sample() equals latent_dist.mean up to 3e-7.

    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:] = 0
        vae.quant_conv.bias[c:] = -30.0
    # Training only ever uses the mean, so these rows get zero gradients and (without weight decay) stay put.


def _scheduler():

    # The plain DDPM schedule (linear betas 1e-4..0.02 over 1000 steps); "trailing" so 10-step sampling starts
    # at t=999 (pure noise), which matters at so few steps.
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing", prediction_type="v_prediction",
    )


# ---------------------------------------------------------------------------------------------------------------
# Pretraining

def train_vae(vae, steps: int, generator, batch: int = 64, lr: float = 3e-3) -> float:
    """Train the VAE to be near-identity: latent mean ~ image, decode(latent) ~ image. Returns the final loss."""

    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loss = torch.tensor(0.0)
    for _ in tqdm(range(steps), desc="toy-sd15 (first use): pretraining VAE", leave=False, dynamic_ncols=True):
        x, _ = synthetic_batch(batch, generator)
        z = vae.encode(x).latent_dist.mean
        # The decoder also sees slightly perturbed latents, as the UNet's samples are never exact.
        z_dec = z + torch.randn(z.shape, generator=generator) * 0.02
        loss = torch.nn.functional.mse_loss(z, x) + torch.nn.functional.mse_loss(vae.decode(z_dec).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def train_denoiser(unet, text_encoder, tokenizer, vae, scheduler, steps: int, generator, batch: int = 64,
                   lr: float = 1e-3, caption_dropout: float = 0.1) -> float:
    """The ordinary denoising loss (v-prediction) on toy images, UNet and text encoder together."""

    # Tokenise every caption (and "" for dropped captions) once, exactly as the pipeline does.
    texts = all_captions() + [""]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    row = {t: i for i, t in enumerate(texts)}
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    # Cosine decay to zero: the last steps at a small learning rate clean up the samples a lot.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / max(steps, 1))))
    alphas = scheduler.alphas_cumprod
    loss = torch.tensor(0.0)
    for _ in tqdm(range(steps), desc="toy-sd15 (first use): pretraining UNet + text encoder", leave=False,
                  dynamic_ncols=True):
        x, caps = synthetic_batch(batch, generator)
        drop = torch.rand(batch, generator=generator) < caption_dropout
        caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, len(alphas), (batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        velocity = a.sqrt() * noise - (1 - a).sqrt() * latents
        emb = text_encoder(ids[[row[c] for c in caps]])[0]
        loss = torch.nn.functional.mse_loss(unet(noisy, t, emb).sample, velocity)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return loss.item()


def build_toy_sd15(out: Path, steps: int = 600, vae_steps: int = 200, lr: float = 3e-3, seed: int = 0) -> None:
    """Build and pretrain the toy StableDiffusionPipeline into `out` (deterministic for a given seed and CPU type)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in a fixed order: the same weights whatever the core count (and no slower)
    try:
        torch.manual_seed(seed)
        text_encoder, unet, vae = _text_encoder(), _unet(), _vae()
        scheduler, tokenizer = _scheduler(), clip_tokenizer()
        generator = torch.Generator().manual_seed(seed)
        vae_loss = train_vae(vae, vae_steps, generator)
        vae.requires_grad_(False)
        denoise_loss = train_denoiser(unet, text_encoder, tokenizer, vae, scheduler, steps, generator, lr=lr)
    finally:
        torch.set_num_threads(threads)
    if not (math.isfinite(vae_loss) and math.isfinite(denoise_loss)):
        raise RuntimeError(f"toy pretraining diverged (vae loss {vae_loss}, denoising loss {denoise_loss})")
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
