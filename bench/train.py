"""Benchmark one Diffusion-DPO training step: pairs/s and peak memory of the UNet part of `aif train`.

Real size (GPU): SDXL / SD1.5 UNets built from their published configs with random weights (no download), stored
latents and text embeddings as input (the `--data ai` path with latents; the VAE and text encoders are outside the
timing). Policy forward+backward on winners+losers, reference forward (adapters off for LoRA, a frozen copy for
full), DPO loss, optimizer step.
  python bench/train.py --family sdxl --resolution 1024 --batch-size 1 --lora-rank 0 --mixed-precision bf16 \\
      --gradient-checkpointing
  python bench/train.py --tiny            # the tiny zoo UNet on CPU at 32 px
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from realsize import SD15_UNET, SDXL_UNET  # bench/ is on sys.path as the script folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["sdxl", "sd15"], default="sdxl")
    p.add_argument("--tiny", action="store_true", help="tiny zoo UNet (tiny-sdxl / tiny-sd15) on CPU")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 1024 SDXL, 512 SD1.5, 32 tiny)")
    p.add_argument("--batch-size", type=int, default=1, help="pairs per step")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="bf16")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()

    from diffusers import UNet2DConditionModel

    from aifeedback.losses.dpo import denoising_mse, dpo

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        from aifeedback.zoo import tiny_pipeline_path

        unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_path(f"tiny-{args.family}"), subfolder="unet")
        res, factor = args.resolution or 32, 2
    else:
        with torch.device(device):  # initialise on the GPU: seconds instead of a minute on its CPU
            unet = UNet2DConditionModel(**(SDXL_UNET if args.family == "sdxl" else SD15_UNET))
        res, factor = args.resolution or (1024 if args.family == "sdxl" else 512), 8
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    ref = None
    if args.lora_rank:
        from peft import LoraConfig

        unet.requires_grad_(False).to(device, dtype)
        unet.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        for prm in unet.parameters():
            if prm.requires_grad:
                prm.data = prm.data.float()
    else:
        unet.to(device)
        ref = copy.deepcopy(unet).requires_grad_(False).to(dtype)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [q for q in unet.parameters() if q.requires_grad]
    if args.family == "sdxl" and not args.tiny:
        from transformers.optimization import Adafactor

        opt = Adafactor(params, lr=1e-8, scale_parameter=False, relative_step=False)
    else:
        opt = torch.optim.AdamW(params, lr=1e-8)

    cfg = unet.config
    B, h = args.batch_size, res // factor
    lat = torch.randn(2 * B, cfg.in_channels, h, h, device=device)
    emb = torch.randn(2 * B, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    cond = {}
    if cfg.addition_embed_type == "text_time":
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        cond = {
            "added_cond_kwargs": {
                "text_embeds": torch.randn(2 * B, pooled_dim, device=device, dtype=dtype),
                "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * 2 * B, device=device, dtype=dtype),
            }
        }
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=args.mixed_precision != "no")

    def step() -> None:
        noise = torch.randn_like(lat[:B]).repeat(2, 1, 1, 1)
        t = torch.randint(0, 1000, (B,), device=device).repeat(2)
        noisy = lat + noise  # the schedule's arithmetic is negligible next to the UNet
        with autocast:
            mw, ml = denoising_mse(unet(noisy, t, emb, **cond).sample, noise).chunk(2)
            with torch.no_grad():
                if ref is None:
                    unet.disable_adapters()
                    rw, rl = denoising_mse(unet(noisy, t, emb, **cond).sample, noise).chunk(2)
                    unet.enable_adapters()
                else:
                    rw, rl = denoising_mse(ref(noisy, t, emb, **cond).sample, noise).chunk(2)
            loss = dpo(mw, ml, rw, rl, 5000.0).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

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
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    if device == "cpu":
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS, GiB
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "unet": f"tiny-{args.family}" if args.tiny else args.family, "resolution": res, "pairs_per_step": B,
        "lora_rank": args.lora_rank, "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing, "s_per_step": round(dt, 4),
        "pairs_per_s": round(B / dt, 3), "peak_memory_gib": round(peak, 2),
        "peak_memory_kind": "cuda max allocated" if device == "cuda" else "process max RSS",
    }))


if __name__ == "__main__":
    main()
