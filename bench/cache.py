"""Benchmark `aif cache`: training step time from images against the same run from an `aif cache` of them (no VAE
encoder and no text encoder in the step), on the tiny zoo models on CPU.

  python bench/cache.py                         # tiny-sd15 and tiny-sdxl, 64 px, batch 4, 12 steps
  python bench/cache.py --models tiny-sd15 --steps 4 --pairs 16    # what tests/test_data_scale.py runs

Step time: the median CPU (and wall) time of an optimizer step after a warm-up one, data loading included
(num_workers 0, so the process's CPU time is all of it; on a shared machine compare the CPU time).
Prints one JSON line per model, and a last JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pairs_fixtures: the synthetic pairs


def step_seconds(cfg: Any, steps: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of an optimizer step after a warm-up one, data loading included."""
    from aifeedback.stages.train import TrainRecipe

    recipe = TrainRecipe(cfg)
    recipe.setup()
    recipe._optimizer_step()  # warm-up
    cpu, wall = [], []
    for _ in range(steps):
        c0, w0 = time.process_time(), time.perf_counter()
        recipe._optimizer_step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def bench(model: str, data: Path, work: Path, args: argparse.Namespace) -> dict:
    from aifeedback.config import build_config
    from aifeedback.stages.cache import run as cache
    from aifeedback.stages.cache_config import CacheConfig
    from aifeedback.stages.train import TrainConfig

    common = dict(model=model, resolution=args.resolution, mixed_precision="no")
    t0 = time.perf_counter()
    cached = cache(build_config(CacheConfig, dict(dataset=str(data), out=str(work / f"{model}-encoded"), progress=False,
                                                  batch_size=args.batch_size, **common)))
    cache_s = time.perf_counter() - t0
    result = {"model": model, "resolution": args.resolution, "batch_pairs": args.batch_size,
              "cache_s_per_pair": round(cache_s / args.pairs, 4)}
    for name, dataset in (("images", data), ("cache", cached)):
        cfg = build_config(TrainConfig, dict(dataset=str(dataset), out=str(work / f"{model}-{name}"),
                                             max_steps=args.steps + 1, batch_size=args.batch_size, lora_rank=4,
                                             validation_every=0, num_workers=0, trackers="none", progress=False,
                                             **common))
        cpu, wall = step_seconds(cfg, args.steps)
        result[f"step_cpu_s_{name}"], result[f"step_wall_s_{name}"] = round(cpu, 4), round(wall, 4)
    result["speedup_cpu"] = round(result["step_cpu_s_images"] / result["step_cpu_s_cache"], 2)
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
