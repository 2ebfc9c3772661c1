"""What every family added after SD1.5/SDXL (SD3, FLUX.1, the SDXL refiner, Z-Image, Qwen-Image, FLUX.2) must hold
in training, run on each tiny model: a killed and resumed run ends bitwise where an uninterrupted one does (full and
LoRA), and a 2-process LoRA run starts at ln 2 (SD1.5 and SDXL have the same checks in tests/test_train.py)."""

import math
import os
from pathlib import Path

import pytest
import torch

from tests.launch import run_group
from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic

# model -> its denoiser's folder; flux-dev: the guidance embedding is the FLUX path with the most inputs
MODELS = {"tiny-sd3": "transformer", "tiny-flux-dev": "transformer", "tiny-sdxl-refiner": "unet",
          "tiny-z-image": "transformer", "tiny-qwen-image": "transformer", "tiny-flux2": "transformer",
          "tiny-flux2-klein": "transformer"}


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(4))


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_resume_equals_uninterrupted_full_and_lora(model, human, tmp_path):
    from safetensors.torch import load_file

    from aifeedback.stages.train import run

    for kind, kw, name in [("full", dict(lr=1e-3), f"{MODELS[model]}/diffusion_pytorch_model.safetensors"),
                           ("lora", dict(lora_rank=2, lr=1e-2), "pytorch_lora_weights.safetensors")]:
        kw = dict(kw, model=model, max_steps=4, checkpoint_every=2)
        run(tiny_train(human, tmp_path / kind / "a", **kw))
        run(tiny_train(human, tmp_path / kind / "b", **dict(kw, max_steps=2)))
        run(tiny_train(human, tmp_path / kind / "b", **kw))  # resumes from checkpoint-000002
        wa = load_file(tmp_path / kind / "a" / "checkpoints/checkpoint-000004" / name)
        wb = load_file(tmp_path / kind / "b" / "checkpoints/checkpoint-000004" / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), kind
        assert [r["loss"] for r in read_metrics(tmp_path / kind / "a")] == \
            [r["loss"] for r in read_metrics(tmp_path / kind / "b")]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_two_process_lora_run(model, human, tmp_path):
    from tests.launch import accelerate_launch

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    out = tmp_path / "ddp"
    cmd = [*accelerate_launch(2), "train", "--dataset", str(human), "--model", model, "--lora-rank", "2",
           "--batch-size", "1", "--max-steps", "2", "--checkpoint-every", "2", "--validation-every", "0",
           "--num-workers", "0", "--trackers", "none", "--resolution", "16", "--lr", "1e-2", "--no-scale-lr",
           "--out", str(out)]
    res = run_group(cmd, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = read_metrics(out)
    # LoRA B starts at zero: policy and reference errors are equal, so only float32 rounding of ln(1 + e^0) remains
    assert [r["step"] for r in m] == [1, 2] and abs(m[0]["loss"] - math.log(2)) < 1e-6
    assert "2 process(es)" in res.stderr
