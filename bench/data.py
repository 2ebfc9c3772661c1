"""Benchmark reading preference pairs at scale: time to the first training step, peak memory and extra disk of
`aif train` on a local Pick-a-Pic-layout Parquet folder, read in place (today's path) or converted into the
`datasets` Arrow cache first (the path before in-place reading, `datasets.load_dataset("parquet", ...)`).

The synthetic folder (tiny JPEGs, labels, captions; files of 100K pairs in row groups of 1000) is written once per
size under --work and reused. Each measurement runs in a fresh process with an empty HF_DATASETS_CACHE: the
trainer's setup (tiny-sd15 on CPU at 8 px, so the model part is small and constant) and its first optimizer step,
in wall and CPU seconds (the CPU time is what to compare on a shared machine).
  python bench/data.py --pairs 10000 1000000
  python bench/data.py --pairs 2000 --modes in-place --work /tmp/x     # what tests/test_data_scale.py runs
Prints one JSON line per (size, mode), and a last JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILE_PAIRS = 100_000  # pairs per Parquet file (Pick-a-Pic's hub files hold ~1-2K larger pairs; the count matters)
GROUP = 1000  # rows per row group
POOL = 4096  # distinct images; rows store their own copy of the bytes (no dictionary encoding), like real data


def write_dataset(folder: Path, n: int) -> None:
    """n synthetic pairs in the Pick-a-Pic layout, written once (a finished folder has a .done marker)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if (folder / ".done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(POOL):
        buf = io.BytesIO()
        arr = np.clip(rng.integers(0, 255, 3) + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    for start in range(0, n, FILE_PAIRS):
        m = min(FILE_PAIRS, n - start)
        first = rng.integers(2, size=m).astype(np.float64)
        table = pa.table({
            "caption": [f"synthetic prompt {i}" for i in range(start, start + m)],
            "jpg_0": pa.array([pool[i] for i in rng.integers(POOL, size=m)], pa.binary()),
            "jpg_1": pa.array([pool[i] for i in rng.integers(POOL, size=m)], pa.binary()),
            "label_0": first, "label_1": 1.0 - first,
        })
        name = f"train-{start // FILE_PAIRS:05d}-of-{-(-n // FILE_PAIRS):05d}.parquet"
        pq.write_table(table, folder / name, row_group_size=GROUP, use_dictionary=["caption"])
    (folder / ".done").touch()


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def child(mode: str, dataset: str, out: str) -> dict:
    """One measurement in this (fresh) process: trainer setup and first step on `dataset`."""
    from aifeedback.config import build_config
    from aifeedback.console import quiet_libraries
    from aifeedback.data import pairs as D
    from aifeedback.data.sources import open_pairs  # imported before the clock starts in both modes (`datasets`)
    from aifeedback.stages.train import TrainConfig, TrainRecipe

    quiet_libraries()
    if mode == "datasets-cache":  # the path before in-place reading: every local table through load_dataset
        D.open_table = lambda data, ds, split, streaming=False, **_: open_pairs(ds, split).dataset(streaming)
    cfg = build_config(TrainConfig, dict(dataset=dataset, model="tiny-sd15", out=out, resolution=8, max_steps=1,
                                         batch_size=2, validation_every=0, num_workers=0, trackers="none",
                                         progress=False, checkpoint_every=1))
    t0, c0 = time.perf_counter(), cpu_s()
    recipe = TrainRecipe(cfg)
    recipe.setup()
    recipe._optimizer_step()
    return {"first_step_s": round(time.perf_counter() - t0, 2), "first_step_cpu_s": round(cpu_s() - c0, 2),
            "pairs": recipe.n_pairs, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def cpu_s() -> float:
    """CPU seconds of this process so far: the machine may be shared, so wall time alone says little."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(mode: str, folder: Path, work: Path) -> dict:
    """Run `child` in a fresh process with an empty `datasets` cache; add the disk that the run left in it."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        env = dict(os.environ, HF_DATASETS_CACHE=str(Path(tmp) / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        cmd = [sys.executable, __file__, "--child", mode, "--dataset", str(folder), "--out", str(Path(tmp) / "run")]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        result = json.loads(r.stdout.strip().splitlines()[-1])
        result["extra_disk_mb"] = round(folder_mb(Path(tmp) / "hf"), 1)
    return {"mode": mode, "dataset_mb": round(folder_mb(folder), 1), **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--modes", nargs="+", default=["in-place", "datasets-cache"], choices=["in-place",
                                                                                           "datasets-cache"])
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement (the least disturbed one is kept)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "aif-bench-data"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dataset, args.out)))
        return
    work = Path(args.work)
    results = []
    for n in args.pairs:
        folder = work / f"pairs-{n}"
        write_dataset(folder, n)
        for mode in args.modes:
            runs = [measure(mode, folder, work) for _ in range(args.repeat)]
            results.append(min(runs, key=lambda r: r["first_step_cpu_s"]))  # the least disturbed run
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
