"""Benchmark: VLM-judge images per second, from JPEG bytes to scores, through the score stage's own input pipeline.

JPEG decode and Qwen's fetch_image resize run in DataLoader workers (`aifeedback.scoring.loop`); the judge runs one
forward pass per batch (chat template + processor on the main process, then the model) and reads the answer
position's log-probabilities.

  # real size (GPU box, offline): Qwen2.5-VL-7B-Instruct's architecture with random weights, 64 images
  python bench/vlm.py --random-weights --device cuda --dtype bfloat16 --images 64 --batch-size 16
  # CPU smoke run (tiny random Qwen2.5-VL, same pipeline)
  python bench/vlm.py --tiny
  # a pairwise judge: the images as K = 2 candidates per prompt, judged as aif score does (scoring/pairwise.py:
  # decode in the main process, each pair shown in both orders, two images per forward row)
  python bench/vlm.py --tiny --judge vlm-pairwise
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def real_size(scorer, device: str, dtype: str) -> None:
    """Swap the tiny judge's model for Qwen2.5-VL-7B's architecture with random weights, built on `device` in
    `dtype` (the tiny processor stays: its token ids replace the real ones, the cost per token is the real one)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from aifeedback.families.loading import torch_dtype
    from aifeedback.scoring.scorers.vlm import REAL_CONFIG

    tok = scorer.processor.tokenizer
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(**dict(REAL_CONFIG, **ids))
    before = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(torch_dtype(dtype))
        with torch.device(device):
            scorer.model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default="vlm", help="vlm, vlm-quality, unifiedreward, or a pairwise judge: "
                                                   "vlm-pairwise, unifiedreward-pairwise (default vlm)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: the tiny random Qwen2.5-VL")
    ap.add_argument("--random-weights", action="store_true", help="Qwen2.5-VL-7B architecture, random weights")
    ap.add_argument("--images", type=int, default=64, help="images to score (default 64)")
    ap.add_argument("--image-size", type=int, default=512, help="side of the input JPEGs (default 512)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    ap.add_argument("--workers", type=int, default=None, help="decode/resize processes (default: CPU count)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--warmup", type=int, default=1, help="batches excluded from the timing")
    args = ap.parse_args()

    import torch
    from score import MemoryRows, jpeg_images

    from aifeedback.scoring.loop import ImageGroup, TableImages, score_groups
    from aifeedback.scoring.scorers import load_scorer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    n, bs = args.images, args.batch_size
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if n <= args.warmup * bs:
        ap.error(f"--images {n} leaves nothing to time after {args.warmup} warm-up batch(es) of {bs}")
    if not (args.tiny or args.random_weights):
        ap.error("give --tiny (CPU smoke run) or --random-weights (real size); a real checkpoint: aif score")
    scorer = load_scorer(f"{args.judge}:tiny", device, dtype)
    if args.random_weights:
        real_size(scorer, device, dtype)

    images = jpeg_images(n, args.image_size)
    prompts = [f"a photo of object number {i // 4}" for i in range(n)]
    if scorer.judge.pairwise:
        timed, elapsed = pairwise(scorer, images, bs, args.warmup, device)
        return report(args, timed, elapsed, workers=0, dtype=dtype, device=device, pairs=True)
    groups = [ImageGroup(g, [[(r, (r, "image"), prompts[r]) for r in range(s, min(s + bs, n))]])
              for g, s in enumerate(range(0, n, bs))]
    batches = (s.keys for s in score_groups(groups, TableImages(MemoryRows(images)), [scorer], bs, workers=workers))

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    timed, start = 0, None
    for b, batch in enumerate(batches):
        if b == args.warmup:
            sync()
            start, timed = time.perf_counter(), 0
        timed += len(batch)
    sync()
    report(args, timed, time.perf_counter() - start if start else float("nan"), workers, dtype, device)


def pairwise(scorer, images: list[bytes], bs: int, warmup: int, device: str) -> tuple[int, float]:
    """Images per second of aif score's pairwise phase (scoring/pairwise.judge_units) on prompts of 2 images: each
    pair is one verdict from both orders (2 forward rows of 2 images), `bs` rows per forward."""
    import torch
    from score import MemoryRows

    from aifeedback.scoring.inputs import Unit
    from aifeedback.scoring.loop import TableImages
    from aifeedback.scoring.pairwise import judge_units

    units = [Unit(f"p{i}", f"a photo of object number {i}", [(2 * i, "image"), (2 * i + 1, "image")])
             for i in range(len(images) // 2)]
    read, per_call = TableImages(MemoryRows(images)), max(1, bs // 2)  # pairs per call: 2 rows (orders) each
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timed, start = 0, None
    for c, s in enumerate(range(0, len(units), per_call)):
        if c == warmup:
            sync()
            start, timed = time.perf_counter(), 0
        judge_units(scorer, units[s : s + per_call], s, read, bs)
        timed += 2 * len(units[s : s + per_call])
    sync()
    return timed, time.perf_counter() - start if start else float("nan")


def report(args, timed: int, elapsed: float, workers: int, dtype: str, device: str, pairs: bool = False) -> None:
    import torch

    n, bs = args.images, args.batch_size
    print(json.dumps({
        "bench": "vlm", "judge": args.judge,
        "model": "Qwen2.5-VL-7B architecture, random weights" if args.random_weights else f"{args.judge}:tiny",
        "images_per_s": round(timed / elapsed, 2), "timed_images": timed, "total_images": n,
        **({"pairs_per_s": round(timed / 2 / elapsed, 2), "forward_rows_per_pair": 2} if pairs else {}),
        "input": f"JPEG {args.image_size}x{args.image_size} q95", "batch_size": bs, "workers": workers,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.startswith("cuda") else None,
        "dtype": dtype, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
