"""Benchmark one Diffusion-DPO training step: pairs/s and peak memory of the denoiser part of `aif train`.

Real size (GPU): SDXL / SD1.5 UNets and the SD3.5 / FLUX.1 transformers built from their published configs with
random weights (no download, bench/realsize.py), stored latents and text embeddings as input (the `--data ai` path
with latents; the VAE and text encoders are outside the timing). Policy forward+backward on winners+losers,
reference forward (adapters off for LoRA, a frozen copy for full), DPO loss, optimizer step. The UNets are noised
DDPM-style (epsilon target); the flow-matching transformers at x_t = (1 - sigma) x0 + sigma noise with the velocity
target noise - x0, FLUX on packed 2x2 latents with its position ids and (dev) guidance embedding. FLUX.2 [dev] /
[klein] 4B, Qwen-Image and Z-Image go through aif's own family code (families/*.py: `latent_shape`, `predict`,
`lora_target_modules`) with random 512-token text embeddings, as `aif train` runs them.
  python bench/train.py --family sdxl --resolution 1024 --batch-size 1 --lora-rank 0 --mixed-precision bf16 \\
      --gradient-checkpointing
  python bench/train.py --family flux-dev --batch-size 1 --lora-rank 16 --mixed-precision bf16 --gradient-checkpointing
  python bench/train.py --family flux2-dev --lora-rank 16 --base-quantization nf4 --gradient-checkpointing
  python bench/train.py --tiny            # the tiny zoo UNet on CPU at 32 px (--family flux-dev: tiny-flux-dev)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any, Callable

import torch
from realsize import FAMILY_TRANSFORMERS, SD15_UNET, SDXL_UNET, TRANSFORMERS  # bench/ is on sys.path

UNET_LORA = ["to_k", "to_q", "to_v", "to_out.0"]
# The adapted layers of diffusers' train_dreambooth_lora_sd3.py / _flux.py (their defaults): attention of both
# streams, and for FLUX the feed-forwards of the double blocks too.
SD3_LORA = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k", "attn.to_out.0",
            "attn.to_q", "attn.to_v"]
FLUX_LORA = SD3_LORA + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
TINY = {"flux-dev": "tiny-flux-dev", "flux-schnell": "tiny-flux", "sd35m": "tiny-sd3", "sd35l": "tiny-sd3",
        "flux2-dev": "tiny-flux2", "flux2-klein-4b": "tiny-flux2-klein", "qwen-image": "tiny-qwen-image",
        "z-image": "tiny-z-image"}
TEXT_TOKENS = {"sd35": 77 + 256, "flux": 512}  # pipeline defaults: CLIP 77 + T5 256 (SD3), T5 512 (FLUX.1-dev)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["sdxl", "sd15", *TRANSFORMERS, *FAMILY_TRANSFORMERS], default="sdxl")
    p.add_argument("--tiny", action="store_true", help="the family's tiny zoo denoiser (tiny-sdxl, tiny-sd15, "
                   "tiny-flux-dev, tiny-flux, tiny-sd3, tiny-flux2, tiny-flux2-klein, tiny-qwen-image, "
                   "tiny-z-image) on CPU")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 1024; SD1.5 512, tiny 32)")
    p.add_argument("--batch-size", type=int, default=1, help="pairs per step")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--base-quantization", choices=["none", "nf4", "int8", "fp8"], default="none",
                   help="LoRA only: the frozen base's Linear layers quantized as `aif train --base-quantization` "
                        "loads them (nf4: bitsandbytes Linear4bit, double quantization; int8 / fp8: torchao "
                        "weight-only)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="bf16")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    if args.base_quantization != "none" and not args.lora_rank:
        p.error("--base-quantization quantizes the frozen base of a LoRA run: pass --lora-rank")
    return args


def build_model(args: argparse.Namespace, device: str) -> tuple[Any, int, int]:
    """(denoiser, resolution, VAE downsampling factor)."""
    from diffusers import UNet2DConditionModel

    if args.tiny:
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

        from aifeedback.zoo import tiny_pipeline_path

        name = TINY.get(args.family, f"tiny-{args.family}")
        cls, sub = ((FluxTransformer2DModel if "flux" in name else SD3Transformer2DModel, "transformer")
                    if args.family in TRANSFORMERS else (UNet2DConditionModel, "unet"))
        return cls.from_pretrained(tiny_pipeline_path(name), subfolder=sub), args.resolution or 32, 2
    if args.family in TRANSFORMERS:
        from realsize import build_transformer

        # LoRA keeps the base in the compute dtype: build it there (FLUX in fp32 would need 48 GB for a moment)
        dtype = torch.bfloat16 if args.lora_rank and args.mixed_precision == "bf16" else torch.float32
        return build_transformer(args.family, device, dtype), args.resolution or 1024, 8
    with torch.device(device):  # initialise on the GPU: seconds instead of a minute on its CPU
        unet = UNet2DConditionModel(**(SDXL_UNET if args.family == "sdxl" else SD15_UNET))
    return unet, args.resolution or (1024 if args.family == "sdxl" else 512), 8


def build_family_model(args: argparse.Namespace, device: str) -> tuple[Any, int, Any]:
    """(transformer, resolution, VAE config) of a FAMILY_TRANSFORMERS model: real size (the base built in the
    compute dtype, as build_model does for FLUX.1), or its tiny zoo model."""
    import diffusers

    cls = getattr(diffusers, FAMILY_TRANSFORMERS[args.family][1])
    if args.tiny:
        from aifeedback.zoo import tiny_pipeline_path

        path = tiny_pipeline_path(TINY[args.family])
        vae = diffusers.AutoModel.from_pretrained(str(path), subfolder="vae")
        return cls.from_pretrained(path, subfolder="transformer"), args.resolution or 32, vae.config
    from realsize import build_transformer, family_parts

    dtype = torch.bfloat16 if args.lora_rank and args.mixed_precision == "bf16" else torch.float32
    vae = family_parts(args.family, device="meta")["vae"]  # only its config is read
    return build_transformer(args.family, device, dtype), args.resolution or 1024, vae.config


def family_inputs(model: Any, name: str, n: int, res: int, vae_config: Any, device: str, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, Callable]:
    """Latents in the family's layout and `forward(model, noisy, sigma) -> velocity` through the family's own
    `predict` (timesteps in the scheduler's 0..1000), with random embeddings of 512 text tokens (the pipelines' and
    scripts' max_sequence_length; Z-Image keeps each prompt's own tokens, at most these)."""
    from aifeedback.families import get_family

    fam = get_family(FAMILY_TRANSFORMERS[name][0])
    width = model.config.get("joint_attention_dim") or model.config.cap_feat_dim
    lat = torch.randn(n, *fam.latent_shape(vae_config, res), device=device)
    prompts = {"embeds": torch.randn(n, 512, width, device=device, dtype=dtype),
               "mask": torch.ones(n, 512, dtype=torch.bool, device=device)}
    return lat, lambda m, noisy, s: fam.predict(m, noisy.to(dtype), s * 1000, prompts, None)


def unet_inputs(unet: Any, n: int, res: int, h: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, Callable]:
    """Latents (n, C, h, h) and `forward(model, noisy, t) -> prediction` of a UNet with random text conditioning."""
    cfg = unet.config
    lat = torch.randn(n, cfg.in_channels, h, h, device=device)
    emb = torch.randn(n, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    cond = {}
    if cfg.addition_embed_type == "text_time":
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        cond = {"added_cond_kwargs": {
            "text_embeds": torch.randn(n, pooled_dim, device=device, dtype=dtype),
            "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * n, device=device, dtype=dtype),
        }}
    return lat, lambda m, noisy, t: m(noisy, t * 1000, emb, **cond).sample


def transformer_inputs(model: Any, family: str, n: int, h: int, device: str, dtype: torch.dtype
                       ) -> tuple[torch.Tensor, Callable]:
    """Latents and `forward(model, noisy, sigma) -> prediction` of an SD3.5 / FLUX.1 transformer (random text
    embeddings as long as the pipelines' prompt encodings)."""
    cfg = model.config
    kw = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)  # noqa: E731
    if family.startswith("sd35"):
        lat = torch.randn(n, cfg.in_channels, h, h, device=device)
        text = dict(encoder_hidden_states=kw(n, TEXT_TOKENS["sd35"], cfg.joint_attention_dim),
                    pooled_projections=kw(n, cfg.pooled_projection_dim))
        return lat, lambda m, noisy, s: m(hidden_states=noisy, timestep=s * 1000, **text).sample
    from diffusers import FluxPipeline

    lat = torch.randn(n, (h // 2) ** 2, cfg.in_channels, device=device)  # packed: 2x2 patches of 16 channels
    text = dict(encoder_hidden_states=kw(n, TEXT_TOKENS["flux"], cfg.joint_attention_dim),
                pooled_projections=kw(n, cfg.pooled_projection_dim),
                txt_ids=torch.zeros(TEXT_TOKENS["flux"], 3, device=device, dtype=dtype),
                img_ids=FluxPipeline._prepare_latent_image_ids(n, h // 2, h // 2, device, dtype))
    if cfg.guidance_embeds:  # FLUX.1-dev: the distilled guidance as diffusers' training script passes it
        text["guidance"] = torch.full((n,), 3.5, device=device)
    return lat, lambda m, noisy, s: m(hidden_states=noisy, timestep=s, **text).sample


def prepare(model: Any, args: argparse.Namespace, device: str, dtype: torch.dtype) -> Any:
    """LoRA adapters on a frozen base in `dtype` (reference = adapters off), or a frozen copy as the reference."""
    if not args.lora_rank:
        model.to(device)
        return copy.deepcopy(model).requires_grad_(False).to(dtype)
    from peft import LoraConfig

    if args.family in FAMILY_TRANSFORMERS:
        from aifeedback.families import get_family

        targets = get_family(FAMILY_TRANSFORMERS[args.family][0]).lora_target_modules(model)
    else:
        targets = UNET_LORA if args.family in ("sdxl", "sd15") else FLUX_LORA if "flux" in args.family else SD3_LORA
    model.requires_grad_(False).to(device, dtype)
    if args.base_quantization != "none":
        quantize_base(model, args.base_quantization, dtype)
    model.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, init_lora_weights="gaussian",
                                 target_modules=targets))
    for prm in model.parameters():
        if prm.requires_grad:
            prm.data = prm.data.float()  # trainable adapters in fp32, as the diffusers scripts keep them
    return None


def quantize_base(model: Any, choice: str, dtype: torch.dtype) -> None:
    """Quantize the Linear layers of a frozen model in place, into the layer types diffusers' quantizers load for
    `aif train --base-quantization` (the models here are built, not loaded, so the same layers are made directly)."""
    if choice == "nf4":
        import bitsandbytes as bnb

        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear):
                    layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                              compute_dtype=dtype, compress_statistics=True, quant_type="nf4",
                                              device="meta")
                    layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                                     compress_statistics=True).to(child.weight.device)
                    layer.bias = child.bias
                    setattr(module, name, layer)
        return
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    quantize_(model, {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[choice]())


def make_step(model: Any, ref: Any, forward: Callable, lat: torch.Tensor, flow: bool, opt: Any,
              autocast: Any) -> Callable[[], None]:
    """One DPO step on winners + losers (same noise and timestep per pair)."""
    from aifeedback.losses.base import denoising_mse
    from aifeedback.losses.dpo import dpo

    B = len(lat) // 2
    params = [q for q in model.parameters() if q.requires_grad]
    shape = (-1,) + (1,) * (lat.dim() - 1)

    def reference(noisy, t, target):
        if ref is not None:
            return denoising_mse(forward(ref, noisy, t), target).chunk(2)
        model.disable_adapters()
        try:
            return denoising_mse(forward(model, noisy, t), target).chunk(2)
        finally:
            model.enable_adapters()

    def step() -> None:
        noise = torch.randn_like(lat[:B]).repeat(2, *[1] * (lat.dim() - 1))
        t = torch.rand(B, device=lat.device).repeat(2)
        # the schedules' arithmetic is negligible next to the denoiser: flow-matching interpolation, or DDPM-like
        s = t.view(shape)
        noisy, target = ((1 - s) * lat + s * noise, noise - lat) if flow else (lat + noise, noise)
        with autocast:
            mw, ml = denoising_mse(forward(model, noisy, t), target).chunk(2)
            with torch.no_grad():
                rw, rl = reference(noisy, t, target)
            loss = dpo(mw, ml, rw, rl, 5000.0).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    family = args.family in FAMILY_TRANSFORMERS
    model, res, factor = build_family_model(args, device) if family else build_model(args, device)
    ref = prepare(model, args, device, dtype)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    n, flow = 2 * args.batch_size, family or args.family in TRANSFORMERS
    if family:  # `factor` is the VAE's config here
        lat, forward = family_inputs(model, args.family, n, res, factor, device, dtype)
    elif flow:
        lat, forward = transformer_inputs(model, args.family, n, res // factor, device, dtype)
    else:
        lat, forward = unet_inputs(model, n, res, res // factor, device, dtype)
    params = [q for q in model.parameters() if q.requires_grad]
    if not args.lora_rank and not args.tiny and args.family != "sd15":
        from transformers.optimization import Adafactor  # full fine-tunes of the large models: factored state

        opt = Adafactor(params, lr=1e-8, scale_parameter=False, relative_step=False)
    else:
        opt = torch.optim.AdamW(params, lr=1e-8)
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=args.mixed_precision != "no")
    step = make_step(model, ref, forward, lat, flow, opt, autocast)
    report(args, device, res, step, sum(p.numel() for p in params))


def report(args: argparse.Namespace, device: str, res: int, step: Callable[[], None], trainable: int) -> None:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS, GiB
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "denoiser": f"tiny-{args.family}" if args.tiny else args.family, "resolution": res,
        "pairs_per_step": args.batch_size, "lora_rank": args.lora_rank, "trainable_parameters": trainable,
        "base_quantization": args.base_quantization,
        "mixed_precision": args.mixed_precision, "gradient_checkpointing": args.gradient_checkpointing,
        "s_per_step": round(dt, 4), "pairs_per_s": round(args.batch_size / dt, 3), "peak_memory_gib": round(peak, 2),
        "peak_memory_kind": "cuda max allocated" if device == "cuda" else "process max RSS",
    }))


if __name__ == "__main__":
    main()
