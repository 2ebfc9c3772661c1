"""Benchmark: GenEval rewards per second (`geneval` scorer), from JPEG bytes to scores, through `aif score`'s loop.

The detector sees each image resized into 1333x800 (512 px -> 800x800), so its cost, not decoding, sets the pace;
colour crops run only for detected objects of colour prompts (random weights detect nothing: that part is not
timed by --random-weights or --tiny).

  # real size (GPU box, offline: Mask2Former Swin-S + CLIP ViT-L/14 architectures with random weights)
  python bench/geneval.py --random-weights --device cuda --dtype bfloat16 --batch-size 16 --workers 8
  # with the real weights in the HF cache
  python bench/geneval.py --device cuda --dtype bfloat16 --batch-size 16 --workers 8
  # CPU smoke run (geneval:tiny, same pipeline)
  python bench/geneval.py --tiny
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

from score import MemoryRows, jpeg_images  # noqa: E402  (bench/score.py)


def random_weights() -> tuple[str, str]:
    """Local folders of the real-size detector and CLIP ViT-L/14 with random weights (built once, cached)."""
    from aifeedback.zoo.cache import cached_build

    def detector(out: Path) -> None:
        import torch

        from aifeedback.scoring.scorers.geneval import Mask2FormerDetector, real_detector_config

        torch.manual_seed(0)
        Mask2FormerDetector(real_detector_config()).save_pretrained(out)

    def clip(out: Path) -> None:
        import open_clip

        from aifeedback.scoring.scorers import geneval, openclip

        openclip.build_tiny(out, open_clip.get_model_config(geneval.CLIP_ARCH))

    return str(cached_build("bench-geneval-detector-random", detector)), str(cached_build("bench-geneval-clip-random",
                                                                                          clip))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: geneval:tiny, few images")
    ap.add_argument("--random-weights", action="store_true", help="real-size architectures, random weights (offline)")
    ap.add_argument("--images", type=int, default=None, help="images to score (default 512, 12 with --tiny)")
    ap.add_argument("--image-size", type=int, default=512, help="side of the input JPEGs (GenEval renders 512)")
    ap.add_argument("--batch-size", type=int, default=None, help="images per detector forward (default 16, 4 tiny)")
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: CPU count)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--warmup", type=int, default=1, help="batches excluded from the timing")
    args = ap.parse_args()

    import torch

    from aifeedback.evaluation.geneval import load_metadata
    from aifeedback.scoring.loop import ImageGroup, TableImages, score_groups
    from aifeedback.scoring.scorers.geneval import GenEval

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    n, bs = args.images or (12 if args.tiny else 512), args.batch_size or (4 if args.tiny else 16)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if args.warmup < 1 or n <= args.warmup * bs:
        ap.error(f"--warmup {args.warmup} with --images {n} and --batch-size {bs}: use at least one warm-up batch "
                 "and more images than the warm-up batches hold")
    if args.tiny:
        scorer = GenEval("geneval:tiny", "tiny", device, dtype)
    elif args.random_weights:
        detector, clip = random_weights()
        scorer = GenEval("geneval (random weights)", detector, device, dtype, clip_model=clip)
    else:
        scorer = GenEval("geneval", None, device, dtype)

    images = jpeg_images(n, args.image_size)
    specs = load_metadata()
    prompts = [specs[(i // 4) % len(specs)]["prompt"] for i in range(n)]  # 4 images per prompt, as GenEval
    groups = [ImageGroup(g, [[(r, (r, "image"), prompts[r]) for r in range(s, min(s + bs, n))]])
              for g, s in enumerate(range(0, n, bs))]
    batches = (s.keys for s in score_groups(groups, TableImages(MemoryRows(images)), [scorer], bs, workers=workers,
                                            pin_memory=device.startswith("cuda")))
    done = timed = 0
    start = None
    for b, batch in enumerate(batches):  # a batch arrives scored: the clock starts when the last warm-up one arrives
        done += len(batch)
        if start is not None:
            timed += len(batch)
        elif b == args.warmup - 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start if start else float("nan")
    print(json.dumps({
        "bench": "geneval", "scorer": scorer.name, "images_per_s": round(timed / elapsed, 2), "timed_images": timed,
        "total_images": done, "input": f"JPEG {args.image_size}x{args.image_size} q95", "batch_size": bs,
        "workers": workers, "dtype": dtype, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
    }))


if __name__ == "__main__":
    main()
