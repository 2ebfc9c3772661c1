"""The benchmark scripts still run (their --tiny CPU mode), so they are ready when a GPU session needs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "generate": ["--tiny", "--images", "8"],
    "score": ["--tiny", "--images", "48", "--batch-size", "8", "--workers", "0"],
    "train": ["--tiny", "--steps", "3", "--warmup", "1"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_script_runs(name, aif_cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *CASES[name]], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if name != "generate":  # score and train end with one JSON line of results
        result = json.loads(r.stdout.strip().splitlines()[-1])
        speed = result.get("images_per_s", result.get("pairs_per_s"))
        assert speed == speed and speed > 0  # not NaN
