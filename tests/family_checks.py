"""The checks each flow family's tests make the same way (test_z_image, test_qwen_image, test_flux2): two LoRA DPO
steps whose first loss is ln 2, and stock diffusers loading the LoRA file and changing its images."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tests.pairs_fixtures import read_metrics, tiny_train


def lora_dpo_two_steps(dataset: Path, out: Path, model: str) -> tuple[Path, list[str]]:
    """Two LoRA DPO steps on `model`; returns the checkpoint folder and its LoRA file's keys.

    LoRA B starts at zero and the reference is the same network with adapters off: at step 0 the DPO margin is exactly
    0 and the loss is ln 2 up to float32 rounding of log(1 + exp(0)) (~1e-7). The keys carry the `transformer.` prefix
    the pipelines' load_lora_weights wants."""
    from safetensors import safe_open

    from aifeedback.stages.train import run

    run_dir = run(tiny_train(dataset, out, model=model, lora_rank=2, lr=1e-2, max_steps=2))
    m = read_metrics(run_dir)
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6 and m[0]["implicit_acc"] == 0.5
    assert m[1]["loss"] != m[0]["loss"]  # the adapters moved
    folder = run_dir / "checkpoints" / "checkpoint-000002"
    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") for k in keys)
    return folder, keys


def stock_lora_changes_images(pipe, folder: Path, keys: list[str], prompt: str, **call) -> None:
    """Stock diffusers, no aifeedback code: `pipe` (loaded with from_pretrained) takes the LoRA file with its own
    load_lora_weights, every key loads, and the same seed's images change."""
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np", **call)
    before = pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(str(folder))
    after = pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **kw).images
    assert after.shape == before.shape and not (after == before).all()
    assert sum(".lora_A." in n for n, _ in pipe.transformer.named_parameters()) == len(keys) // 2  # every key loaded
