"""Benchmark `aif cache`: training step time from images against the same run from an `aif cache` of them (no VAE
encoder and no text encoder in the step), on the tiny zoo models on CPU.

  python bench/cache.py                         # tiny-sd15 and tiny-sdxl, 64 px, batch 4, 12 steps
  python bench/cache.py --models tiny-sd15 --steps 4 --pairs 16    # what tests/test_data_scale.py runs

Step time: the median of metrics.jsonl's per-step time (data loading included, num_workers 0) after the first
step. Prints one JSON line per model, and a last JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pairs_fixtures: the synthetic pairs


def step_seconds(run: Path, pairs_per_step: int) -> float:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(pairs_per_step / r["pairs_per_s"] for r in lines[1:])


def bench(model: str, data: Path, work: Path, args: argparse.Namespace) -> dict:
    from aifeedback.config import build_config
    from aifeedback.stages.cache import run as cache
    from aifeedback.stages.cache_config import CacheConfig
    from aifeedback.stages.train import TrainConfig
    from aifeedback.stages.train import run as train

    common = dict(model=model, resolution=args.resolution, mixed_precision="no")
    t0 = time.perf_counter()
    cached = cache(build_config(CacheConfig, dict(dataset=str(data), out=str(work / f"{model}-cache"), progress=False,
                                                  batch_size=args.batch_size, **common)))
    cache_s = time.perf_counter() - t0
    result = {"model": model, "resolution": args.resolution, "batch_pairs": args.batch_size,
              "cache_s_per_pair": round(cache_s / args.pairs, 4)}
    for name, dataset in (("images", data), ("cache", cached)):
        cfg = build_config(TrainConfig, dict(dataset=str(dataset), out=str(work / f"{model}-{name}"),
                                             max_steps=args.steps, batch_size=args.batch_size, lora_rank=4,
                                             validation_every=0, num_workers=0, trackers="none", progress=False,
                                             checkpoint_every=args.steps, **common))
        result[f"step_s_{name}"] = round(step_seconds(train(cfg), args.batch_size), 4)
    result["speedup"] = round(result["step_s_images"] / result["step_s_cache"], 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny-sd15", "tiny-sdxl"])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--pairs", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()

    import torch

    from aifeedback.console import quiet_libraries
    from tests.pairs_fixtures import pickapic_rows, write_pickapic

    torch.set_num_threads(1)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_pickapic(work / "pairs", pickapic_rows(args.pairs, size=(args.resolution * 3 // 2,
                                                                             args.resolution)))
        results = [bench(m, data, work, args) for m in args.models]
        for r in results:
            print(json.dumps(r), flush=True)
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
