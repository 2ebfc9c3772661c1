"""Benchmark of `aif generate`'s per-image path: images/s and where the time goes.

It runs the same code as the stage (sampling.render -> decode_latents -> encode_image -> write_shard) on
one process and splits the wall time into text encoders, UNet, VAE decode, image encoding, shard writing and the
rest (scheduler, latent prep), so "share of time outside the UNet" is measured rather than guessed.

  python bench/generate.py --tiny                                   # CPU smoke run on tiny-sdxl
  python bench/generate.py --random-weights --fp16-vae --compile --channels-last
      # real size on a GPU, offline: the SDXL base architecture with random weights (same cost as the real
      # weights), 1024 px, 50 steps, CFG 5.0, batch 4 (goal: <= 1.1 s/image on an H100)
  python bench/generate.py --dtype float16 --vae madebyollin/sdxl-vae-fp16-fix   # the real weights (hub or cache)
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny-sdxl on CPU at 32 px, 10 steps (overrides the sizes)")
    ap.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0")
    ap.add_argument("--random-weights", action="store_true",
                    help="build the real-size --family architecture with random weights instead of loading --model")
    ap.add_argument("--family", default="sdxl", choices=("sdxl", "sd15"), help="architecture for --random-weights")
    ap.add_argument("--fp16-vae", action="store_true",
                    help="--random-weights: an fp16-safe VAE that decodes in --dtype (like "
                         "madebyollin/sdxl-vae-fp16-fix)")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--images", type=int, default=16, help="timed images (after one warm-up batch)")
    ap.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--vae", default=None, help="replacement VAE, e.g. madebyollin/sdxl-vae-fp16-fix (decodes in fp16)")
    ap.add_argument("--image-format", default="jpeg", choices=("jpeg", "png"))
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (warm-up batch pays the compile)")
    ap.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode (aif generate --compile-mode)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last memory format for UNet and VAE")
    ap.add_argument("--fuse-qkv", action="store_true", help="fuse attention q/k/v projections (diffusers)")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args()
    if args.tiny:
        args.model, args.resolution, args.steps, args.device, args.dtype = "tiny-sdxl", 32, 10, "cpu", "float32"

    import torch

    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.sampling import encode_image, image_seed, optimize_pipeline, render
    from aifeedback.storage.shards import write_shard

    if args.random_weights:
        from realsize import build_pipeline

        t0 = time.perf_counter()
        pipe = build_pipeline(args.family, args.device, args.dtype, fp16_vae=args.fp16_vae)
        args.model = f"{args.family} architecture, random weights"
        print(f"built {args.model} on {args.device} in {time.perf_counter() - t0:.1f} s", flush=True)
    else:
        pipe = load_pipeline(args.model, args.dtype, args.device, vae=args.vae)
    if args.fuse_qkv:
        pipe.fuse_qkv_projections()
    optimize_pipeline(pipe, channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode)

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(name, module):
        # Forward hooks with a device sync: a little overhead, but each part's time is its own.
        def pre(*_):
            sync()
            module._bench_t0 = time.perf_counter()

        def post(*_):
            sync()
            spent[name] += time.perf_counter() - module._bench_t0
            calls[name] += 1

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    timed("unet", pipe.unet)  # on the compiled wrapper, if any: hooks inside a fullgraph compile would break it
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            timed("text encoders", getattr(pipe, name))
    timed("vae decoder", pipe.vae.decoder)

    size, bs = args.resolution, args.batch_size
    prompts = [f"a photo of object number {i}, highly detailed" for i in range(bs + args.images)]
    out = Path(tempfile.mkdtemp(prefix="aif-bench-"))

    def batch(texts, shard):
        t0 = time.perf_counter()
        res = render(pipe, texts, [image_seed(0, t, 0) for t in texts], steps=args.steps, guidance=args.guidance,
                     width=size, height=size)
        sync()
        t1 = time.perf_counter()
        rows = [{"image": encode_image(im, args.image_format)} for im in res.images]
        t2 = time.perf_counter()
        write_shard(out, shard, rows)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    t0 = time.perf_counter()
    batch(prompts[:bs], 0)  # warm-up (and compile)
    warmup_s = time.perf_counter() - t0
    spent.clear()
    calls.clear()
    t_render = t_encode = t_write = 0.0
    start = time.perf_counter()
    for i in range(0, args.images, bs):
        r, e, w = batch(prompts[bs + i: bs + i + bs], 1 + i // bs)
        t_render, t_encode, t_write = t_render + r, t_encode + e, t_write + w
    total = time.perf_counter() - start
    n = len(range(0, args.images, bs)) * bs

    parts = {"unet": spent["unet"], "text encoders": spent["text encoders"], "vae decoder": spent["vae decoder"],
             "image encoding": t_encode, "writing": t_write}
    parts["other (scheduler, latents, post_quant_conv, to "
          "PIL)"] = t_render - spent["unet"] - spent["text encoders"] - spent["vae decoder"]
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    result = {
        "date": datetime.date.today().isoformat(), "device": device_name, "model": args.model, "resolution": size,
        "steps": args.steps, "guidance": args.guidance, "batch_size": bs, "dtype": args.dtype, "vae": args.vae,
        "fp16_vae": args.fp16_vae, "compile": args.compile and args.compile_mode, "warmup_batch_s": warmup_s,
        "channels_last": args.channels_last, "fuse_qkv": args.fuse_qkv, "images": n,
        "images_per_s": n / total, "s_per_image": total / n,
        "unet_s_per_forward": spent["unet"] / max(calls["unet"], 1),
        "share_outside_unet": 1 - spent["unet"] / total,
        "s_per_image_by_part": {k: v / n for k, v in parts.items()},
    }
    print(f"{device_name} | {args.model} {size}px {args.steps} steps cfg {args.guidance} batch {bs} {args.dtype}"
          f"{' compile=' + args.compile_mode if args.compile else ''}{' fp16-vae' if args.fp16_vae else ''}"
          f"{' channels_last' if args.channels_last else ''}")
    print(f"  {result['images_per_s']:.3f} images/s = {result['s_per_image']:.3f} s/image; "
          f"outside the UNet: {100 * result['share_outside_unet']:.1f}%")
    for k, v in parts.items():
        print(f"  {k:<40} {v / n:8.4f} s/image  {100 * v / total:5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))  # last line: the result, like the other bench scripts


if __name__ == "__main__":
    main()
