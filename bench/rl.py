"""Benchmark `aif rl`: images sampled per second and optimizer updates per second of whole epochs (`--algorithm
grpo|nft|awm`), run by the stage itself (stages/rl.py: grpo's SDE/DDIM sampling with per-step log-probs or nft's /
awm's ODE sampling, decoding, the reward, then the updates with the KL's reference forward); the rates are the
stage's own `images_per_s` / `updates_per_s` of metrics.jsonl, the first epoch a warm-up, plus the whole-process
wall time.

  python bench/rl.py --tiny --family sd3        # tiny-sd3 (or --family sd15: tiny-sd15) on CPU, 32 px
  python bench/rl.py --random-weights --family sd35m --resolution 512 --group-size 24 --lora-rank 32 \\
      --mixed-precision bf16 --gradient-checkpointing      # SD3.5 medium, real size, random weights (a GPU)

--random-weights builds the released architecture (bench/realsize.py: transformer, CLIP-L/G, T5-XXL, VAE) with random
weights and hands it to the stage in place of a download; the T5 tokenizer is the offline character-level one
(aifeedback.zoo.tokenizer.t5_tokenizer), padded to the pipeline's 256 tokens as the real one is. The reward is
`redness` (a pixel statistic: no reward model), so the figures are the policy's cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()  # the whole process's wall time, imports and model setup included
TINY = {"sd3": "tiny-sd3", "sd15": "tiny-sd15", "sdxl": "tiny-sdxl"}
REAL = {"sd35m": "stabilityai/stable-diffusion-3.5-medium", "sd35l": "stabilityai/stable-diffusion-3.5-large",
        "flux-dev": "black-forest-labs/FLUX.1-dev", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
        "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}  # the names the stage is told (nothing is loaded)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="sd3", help="--tiny: sd3, sd15, sdxl; --random-weights: sd35m, sd35l, "
                   "flux-dev, sdxl, sd15 (bench/realsize.py)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tiny", action="store_true", help="the tiny zoo model on CPU")
    mode.add_argument("--random-weights", action="store_true", help="the real-size architecture, random weights")
    p.add_argument("--resolution", type=int, default=None, help="pixels (tiny: 32, real size: 512)")
    p.add_argument("--algorithm", choices=["grpo", "nft", "awm"], default="grpo",
                   help="grpo samples with the SDE (log-probs); nft and awm with the ODE and train on the forward "
                   "process")
    p.add_argument("--prompts-per-epoch", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="sampling steps (Flow-GRPO: 10)")
    p.add_argument("--batch-size", type=int, default=4, help="images per optimizer step")
    p.add_argument("--epochs", type=int, default=3, help="epochs; the first is a warm-up")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--kl-beta", type=float, default=0.01, help="Flow-GRPO PickScore: 0.01 (a reference forward)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="CFG in sampling and the update (Flow-GRPO: 4.5)")
    p.add_argument("--timestep-fraction", type=float, default=1.0, help="fraction of the steps trained (grpo: the "
                   "first ones; Flow-GRPO: 0.99)")
    p.add_argument("--t5-length", type=int, default=None, help="pad T5 prompts to this many tokens instead of the "
                   "family's (SD3: 256; flow_grpo's train_sd3.py: 128)")
    return p.parse_args()


def random_pipeline(family: str, device: str):
    """The real-size pipeline with random weights, as `load_pipeline` returns one (float32, loaded on the CPU there;
    built directly on `device` here: seconds instead of minutes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from realsize import build_pipeline

    from aifeedback.zoo.tokenizer import t5_tokenizer

    pipe = build_pipeline(family, device, "float32")
    for tok, enc in (("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3")):
        if type(getattr(pipe, enc, None)).__name__ == "T5EncoderModel" and getattr(pipe, tok) is None:
            setattr(pipe, tok, t5_tokenizer())  # the T5 slot realsize leaves empty (no offline vocabulary)
    return pipe


def main() -> None:
    args = parse_args()
    from aifeedback.collection import skip_exit_collection, uncollected

    skip_exit_collection()  # as `aif` does (cli.main): the process is timed to its exit
    with uncollected():  # the stage's imports, as Stage.run imports a stage (stages/__init__.py)
        import torch

        import aifeedback.families.loading as loading

        if args.t5_length:
            if args.family not in ("sd3", "sd35m", "sd35l"):
                sys.exit(f"--t5-length is for the SD3 families, not {args.family}")
            from aifeedback.families.sd3 import SD3
            SD3.t5_length = args.t5_length
    device = "cuda" if args.random_weights and torch.cuda.is_available() else "cpu"
    model = (TINY if args.tiny else REAL)[args.family]
    if args.random_weights:  # before the stage imports load_pipeline: it gets the random-weight pipeline
        pipe = random_pipeline(args.family, device)
        loading.load_pipeline = lambda *a, **k: pipe
    with uncollected():
        from aifeedback.config import build_config
        from aifeedback.stages.rl import RLRecipe
        from aifeedback.stages.rl_config import RLConfig
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(f"a red object number {i}" for i in range(args.prompts_per_epoch)) + "\n")
        cfg = build_config(RLConfig, dict(
            model=model, prompts=str(prompts), prompts_per_epoch=args.prompts_per_epoch, group_size=args.group_size,
            algorithm=args.algorithm, steps=args.steps, batch_size=args.batch_size, epochs=args.epochs,
            lora_rank=args.lora_rank, kl_beta=args.kl_beta, reward="redness", guidance_scale=args.guidance_scale,
            timestep_fraction=args.timestep_fraction,
            resolution=args.resolution or (32 if args.tiny else 512),
            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
            out=str(Path(tmp) / "run"), progress=False, keep_checkpoints=1))
        if args.tiny:
            cfg.preflight()
        recipe = RLRecipe(cfg)
        recipe.setup()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        recipe.train()
        recipe.cleanup()
        records = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    timed = records[1:] or records  # the first epoch warms up (allocations, kernels)
    images = sum(r["images_per_s"] for r in timed) / len(timed)
    updates = sum(r["updates_per_s"] for r in timed) / len(timed)
    result = {"model": f"{model} ({'random weights' if args.random_weights else 'tiny'})", "device": device,
              "algorithm": args.algorithm,
              "resolution": cfg.resolution, "group": f"{args.prompts_per_epoch} x {args.group_size}",
              "steps": args.steps, "batch_size": args.batch_size, "lora_rank": args.lora_rank,
              "guidance_scale": args.guidance_scale, "timestep_fraction": args.timestep_fraction,
              "mixed_precision": args.mixed_precision, "epochs_timed": len(timed), "images_per_s": round(images, 3),
              "s_per_image": round(1 / images, 4), "updates_per_s": round(updates, 3),
              "s_per_update": round(1 / updates, 4), "wall_s": round(time.perf_counter() - START, 1)}
    if device == "cuda":
        result["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
