"""Benchmark: scored images per second, from JPEG bytes to scores, through the score stage's own input pipeline.

JPEG decode, resize and crop run in DataLoader worker processes (`aifeedback.scoring.loop`, the loop `aif score`
and `aif eval` use); the scorer runs batched on the device. Goal on one H100 with 16 CPU cores: >= 2000 img/s for
PickScore at 224 px (bf16).

  # real size (GPU box, offline: full-size PickScore architecture with random weights, same cost as the real one)
  python bench/score.py --random-weights --device cuda --dtype bfloat16 --batch-size 256 --workers 16
  # with the real weights in the HF cache
  python bench/score.py --scorer pickscore --device cuda --dtype bfloat16 --batch-size 256 --workers 16
  # CPU smoke run (tiny PickScore, same pipeline)
  python bench/score.py --tiny
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def jpeg_images(n: int, size: int, distinct: int = 64) -> list[bytes]:
    """n JPEG byte strings of size x size with smooth random content (decodes like a photo, not like noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(distinct):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        im = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        arr = np.asarray(im).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return [out[i % distinct] for i in range(n)]


class MemoryRows:
    """The `rows` interface of aif score's inputs (take / where) over in-memory JPEG bytes."""

    def __init__(self, images: list[bytes]):
        self.images = images

    def take(self, rows, columns):
        return [{"image": self.images[r]} for r in rows]

    def where(self, row):
        return f"image {row}"


def random_pickscore(dtype: str) -> str:
    """A local folder holding the full-size PickScore architecture with random weights (built once, cached)."""
    from aifeedback.zoo.cache import cached_build

    def build(out: Path) -> None:
        import torch
        from transformers import CLIPConfig, CLIPModel

        from aifeedback.scoring.scorers.pickscore import REAL_CONFIG
        from aifeedback.zoo.tokenizer import clip_tokenizer

        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # GPU init: seconds, not a minute
            model = CLIPModel(CLIPConfig(**REAL_CONFIG))
        model.to(torch.float16).save_pretrained(out)
        clip_tokenizer().save_pretrained(out)

    return str(cached_build("bench-pickscore-random", build))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", default="pickscore", help="scorer spec (default pickscore)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: <scorer>:tiny, fewer images")
    ap.add_argument("--random-weights", action="store_true", help="full-size PickScore with random weights (offline)")
    ap.add_argument("--images", type=int, default=None, help="images to score (default 8192, 256 with --tiny)")
    ap.add_argument("--image-size", type=int, default=512, help="side of the input JPEGs (Pick-a-Pic images are 512)")
    ap.add_argument("--batch-size", type=int, default=None, help="images per forward (default 256, 32 with --tiny)")
    ap.add_argument("--workers", type=int, default=None, help="decode/preprocess processes (default: CPU count)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--warmup", type=int, default=2, help="batches excluded from the timing")
    ap.add_argument("--decode-only", action="store_true",
                    help="time the input pipeline alone (JPEG decode, resize, crop in the workers): its ceiling")
    args = ap.parse_args()

    import torch

    from aifeedback.scoring.loop import ImageGroup, TableImages, image_batches, score_groups
    from aifeedback.scoring.scorers import load_scorer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    n = args.images or (256 if args.tiny else 8192)
    bs = args.batch_size or (32 if args.tiny else 256)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if n <= args.warmup * bs:
        ap.error(f"--images {n} leaves nothing to time after {args.warmup} warm-up batches of {bs}; "
                 f"use more images, a smaller --batch-size or --warmup")
    if args.tiny or args.decode_only:  # --decode-only needs only the transform, which the tiny model shares
        spec = f"{args.scorer.split(':')[0]}:tiny"
    else:
        spec = f"pickscore:{random_pickscore(dtype)}" if args.random_weights else args.scorer
    scorer = load_scorer(spec, device, dtype)

    images = jpeg_images(n, args.image_size)
    prompts = [f"prompt number {i // 4}" for i in range(n)]  # 4 images per prompt, as in an aif generate output
    # One group per batch: workers take whole groups, like shards in the score stage.
    groups = [ImageGroup(g, [[(r, (r, "image"), prompts[r]) for r in range(s, min(s + bs, n))]])
              for g, s in enumerate(range(0, n, bs))]
    read, pin = TableImages(MemoryRows(images)), device.startswith("cuda")
    if args.decode_only:
        batches = (b["errors"] for b in image_batches(groups, read, [scorer.transform], bs, workers=workers,
                                                      pin_memory=pin))
    else:
        batches = (s.keys for s in score_groups(groups, read, [scorer], bs, workers=workers, pin_memory=pin))

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    done = timed = 0
    start = None
    for b, batch in enumerate(batches):
        if b == args.warmup:
            sync()
            start, timed = time.perf_counter(), 0
        done += len(batch)
        timed += len(batch)
    sync()
    elapsed = time.perf_counter() - start if start else float("nan")
    result = {
        "bench": "score", "scorer": "none (--decode-only: input pipeline alone)" if args.decode_only else
        spec if not args.random_weights else "pickscore (full size, random weights)",
        "images_per_s": round(timed / elapsed, 1), "timed_images": timed, "total_images": done,
        "input": f"JPEG {args.image_size}x{args.image_size} q95", "batch_size": bs, "workers": workers,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "dtype": dtype, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
