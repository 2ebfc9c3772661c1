"""The benchmark scripts still run (their --tiny CPU mode), so they are ready when a GPU session needs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# ~50 s of CPU in fresh processes; they guard scripts used in GPU sessions, not the stages: `make test-slow`
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "generate": ["--tiny", "--images", "8"],
    # the real-size path bench/gpu.sh takes on a GPU, shrunk: SD1.5's architecture at 64 px, one step
    "generate-random-weights": ["--random-weights", "--family", "sd15", "--device", "cpu", "--dtype", "float32",
                                "--resolution", "64", "--steps", "1", "--batch-size", "1", "--images", "1"],
    "score": ["--tiny", "--images", "48", "--batch-size", "8", "--workers", "0"],
    "score-decode-only": ["--decode-only", "--device", "cpu", "--images", "48", "--batch-size", "8", "--workers", "1"],
    "train": ["--tiny", "--steps", "3", "--warmup", "1"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bench_script_runs(case, aif_cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = ROOT / "bench" / f"{case.split('-')[0]}.py"
    r = subprocess.run(
        [sys.executable, str(script), *CASES[case]], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])  # every script ends with one JSON line of results
    speed = result.get("images_per_s", result.get("pairs_per_s"))
    assert speed == speed and speed > 0  # not NaN


def test_real_size_architectures_match_the_released_checkpoints():
    """bench/realsize.py builds what the hub holds: parameter counts of the released SDXL base / SD1.5 models."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realsize
    finally:
        sys.path.remove(str(ROOT / "bench"))
    released = {  # parameters per component of stabilityai/stable-diffusion-xl-base-1.0 and stable-diffusion-v1-5
        "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
        "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    }
    for family, parts in released.items():
        pipe = realsize.build_pipeline(family, device="meta", dtype="float32")  # shapes only, nothing allocated
        counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in parts}
        assert counts == parts, family
        assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
