"""The stages on a CUDA device in half precision (opt-in: `pytest -m gpu`; skipped without a GPU)."""

import math

import pytest
import torch

from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_generate_fp16_on_gpu(tmp_path, tiny_sdxl):
    import io

    import numpy as np
    from PIL import Image

    from aifeedback.config import build_config
    from aifeedback.stages.generate import GenerateConfig, run
    from aifeedback.storage.shards import read_rows

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue ball\n")
    out = run(build_config(GenerateConfig, dict(model="tiny-sdxl", prompts=str(prompts), images_per_prompt=2, steps=2,
                                                resolution=32, device="cuda", dtype="float16",
                                                out=str(tmp_path / "g"))))
    rows = read_rows(out)
    assert len(rows) == 4
    for r in rows:
        pixels = np.asarray(Image.open(io.BytesIO(r["image"])))
        assert np.isfinite(pixels).all() and pixels.std() > 0  # fp16 did not produce NaN / flat images


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lora_dpo_mixed_precision_on_gpu(tmp_path, tiny_sd15, precision):
    from aifeedback.stages.train import run

    data = write_pickapic(tmp_path / "pairs", pickapic_rows(8))
    out = tmp_path / "run"
    run(tiny_train(data, out, lora_rank=4, mixed_precision=precision, max_steps=3, checkpoint_every=3))
    metrics = read_metrics(out)
    assert abs(metrics[0]["loss"] - math.log(2)) < 1e-6  # LoRA: the reference is the same weights, exact at step 0
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in metrics)


@pytest.mark.parametrize("spec", ["pickscore:tiny", "imagereward:tiny", "hpsv2:tiny", "aesthetic:tiny", "hpsv3:tiny"])
def test_scorer_bf16_on_gpu_matches_cpu(spec):
    from PIL import Image

    from aifeedback.scoring.scorers import load_scorer

    images = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    prompts = ["a red square", "a green square", "a blue square"]
    cpu = load_scorer(spec, device="cpu", dtype="float32").score(images, prompts)
    gpu = load_scorer(spec, device="cuda", dtype="bfloat16").score(images, prompts)
    assert gpu == pytest.approx(cpu, abs=0.05 * max(1.0, max(abs(c) for c in cpu)))


def _fsdp_train(data, out, steps: int, processes: int, *options: str):
    """`aif train` launched by accelerate with the shipped FSDP config (accelerate runs FSDP only on an accelerator)."""
    import os
    import sys
    from pathlib import Path

    from tests.launch import free_port, run_group

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "recipes/accelerate/fsdp_8gpu.yaml"), "--num_processes", str(processes), "--main_process_port",
           str(free_port()), "-m", "aifeedback", "train", "--dataset", str(data), "--model", "tiny-sd15",
           "--resolution", "16", "--batch-size", "2", "--max-steps", str(steps), "--checkpoint-every", "2",
           "--validation-every", "2", "--validation-steps", "2", "--num-workers", "0", "--trackers", "none",
           "--out", str(out), *options]
    return run_group(cmd, env=dict(os.environ, PYTHONPATH=str(root)),
                     timeout=600)


def _validation_grids_drawn(out, steps) -> None:
    import numpy as np
    from PIL import Image

    for step in steps:
        pixels = np.asarray(Image.open(out / "validation" / f"step-{step:06d}.png"))
        assert pixels.std() > 0  # drawn by the sharded model, not a blank canvas


def test_fsdp_config_trains_checkpoints_and_resumes(tmp_path):
    data = write_pickapic(tmp_path / "pairs", pickapic_rows(8))
    out = tmp_path / "run"
    first = _fsdp_train(data, out, 2, 1)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-000002" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    again = _fsdp_train(data, out, 4, 1)  # resumes from the sharded checkpoint
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and abs(metrics[0]["loss"] - math.log(2)) < 1e-6
    assert all(math.isfinite(m["loss"]) for m in metrics)
    _validation_grids_drawn(out, [0, 2, 4])  # 0: the untrained baseline, the sharded model's first forward


@pytest.mark.parametrize("processes", [1, 2])
def test_fsdp_lora_reference_and_validation_on_every_process(tmp_path, processes):
    # Every process joins each forward of the sharded UNet: the LoRA reference pass and the validation sampling.
    if torch.cuda.device_count() < processes:
        pytest.skip(f"{processes} FSDP processes need {processes} GPUs (NCCL takes one device per process)")
    data = write_pickapic(tmp_path / "pairs", pickapic_rows(8))
    out = tmp_path / "run"
    res = _fsdp_train(data, out, 2, processes, "--lora-rank", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = read_metrics(out)
    assert abs(metrics[0]["loss"] - math.log(2)) < 1e-6  # the reference (adapters off) equals the policy at step 0
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert (out / "checkpoints" / "checkpoint-000002" / "pytorch_lora_weights.safetensors").exists()
    _validation_grids_drawn(out, [0, 2])
