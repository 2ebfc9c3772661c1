"""`aif train --base-quantization`: a LoRA trained on a quantized frozen base (torchao int8 / fp8 weight-only run on
a CPU; bitsandbytes nf4 needs a GPU and is measured by bench/gpu.sh). The reference (adapters off) runs the same
quantized weights, so the first DPO loss stays ln 2; the LoRA exported loads into the unquantized base."""

import math
import sys

import pytest
import torch
from typer.testing import CliRunner

from aifeedback.cli import app
from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic

runner = CliRunner()


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(4))


def _quantized_weights(model) -> tuple[int, int]:
    """(torchao-quantized weights, Linear weights) of a model: every frozen Linear should be quantized."""
    from torchao.utils import TorchAOBaseTensor

    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(isinstance(w, TorchAOBaseTensor) for w in linear), len(linear)


def _train(cfg):
    """`train.run` without its file checks, keeping the recipe to look at its models."""
    from aifeedback.stages.train import TrainRecipe

    recipe = TrainRecipe(cfg)
    recipe.setup()
    denoiser = recipe.accelerator.unwrap_model(recipe.model)
    n_quantized, n_linear = _quantized_weights(denoiser.get_base_model() if hasattr(denoiser, "get_base_model")
                                               else denoiser)
    encoders = [_quantized_weights(e) for e in recipe.text.encoders]
    recipe.train()
    recipe.cleanup()
    return recipe.out, (n_quantized, n_linear), encoders


@pytest.mark.parametrize("model,quant,mp", [
    ("tiny-sd15", "int8", "no"),
    pytest.param("tiny-flux-dev", "fp8", "bf16", marks=pytest.mark.slow),
])
def test_lora_dpo_on_a_quantized_base_starts_at_ln2_trains_and_exports(human, tmp_path, model, quant, mp):
    pytest.importorskip("torchao")
    from safetensors.torch import load_file

    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline
    from aifeedback.stages.export import ExportConfig
    from aifeedback.stages.export import run as export

    cfg = tiny_train(human, tmp_path / "run", model=model, lora_rank=2, lr=1e-2, base_quantization=quant,
                     mixed_precision=mp, max_steps=2, checkpoint_every=1)
    out, (n_quantized, n_linear), encoders = _train(cfg)
    # the frozen base: every Linear weight quantized, all but LoRA's own A and B layers (one file tensor each)
    lora_linears = len(load_file(out / "checkpoints/checkpoint-000001/pytorch_lora_weights.safetensors"))
    assert n_quantized > 0 and n_quantized == n_linear - lora_linears
    assert all(q > 0 and q == n for q, n in encoders)
    losses = [r["loss"] for r in read_metrics(out)]
    assert abs(losses[0] - math.log(2)) < 1e-6  # reference = adapters off on the same quantized weights
    w1 = load_file(out / "checkpoints/checkpoint-000001/pytorch_lora_weights.safetensors")
    w2 = load_file(out / "checkpoints/checkpoint-000002/pytorch_lora_weights.safetensors")
    assert all(v.dtype == torch.float32 for v in w2.values())
    assert any(not torch.equal(w1[k], w2[k]) for k in w1), "the adapters did not train"
    # the export is a plain LoRA that stock diffusers loads into the unquantized base, and it changes the images
    lora = export(build(ExportConfig, checkpoint=str(out), out=str(tmp_path / "lora")))
    pipe = load_pipeline(model)
    kw = dict(height=16, width=16, num_inference_steps=2, output_type="np")
    base = pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(str(lora))
    tuned = pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw).images
    assert not (tuned == base).all()
    # `aif sample --base-quantization`: the LoRA on the quantized base, whose weights are quantized there too
    qpipe = load_pipeline(model, quantization=quant, tuned=str(lora))
    assert _quantized_weights(getattr(qpipe, detect(qpipe).denoiser))[0] > 0
    drawn = [_sample(tmp_path / name, model=model, base_quantization=quant, **extra)
             for name, extra in (("q", {}), ("q-lora", {"tuned": str(lora)}))]
    assert not (drawn[0] == drawn[1]).all()


def _sample(out, **kw):
    import numpy as np
    from PIL import Image

    from aifeedback.stages.sample import SampleConfig
    from aifeedback.stages.sample import run as sample

    paths = sample(build(SampleConfig, out=str(out), limit=1, steps=2, resolution=16, grid=False, **kw))
    return np.asarray(Image.open(paths[0]))


def build(cls, **kw):
    from aifeedback.config import build_config

    return build_config(cls, kw)


@pytest.mark.slow
def test_quantized_base_resume_equals_uninterrupted(human, tmp_path):
    pytest.importorskip("torchao")
    from safetensors.torch import load_file

    from aifeedback.stages.train import run

    kw = dict(model="tiny-sd15", lora_rank=2, lr=1e-2, base_quantization="int8", max_steps=4, checkpoint_every=2)
    run(tiny_train(human, tmp_path / "a", **kw))
    run(tiny_train(human, tmp_path / "b", **dict(kw, max_steps=2)))
    run(tiny_train(human, tmp_path / "b", **kw))  # resumes from checkpoint-000002
    name = "checkpoints/checkpoint-000004/pytorch_lora_weights.safetensors"
    wa, wb = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [r["loss"] for r in read_metrics(tmp_path / "b")]


def test_quantized_base_is_refused_for_a_full_finetune(tmp_path):
    result = runner.invoke(app, ["train", "--model", "tiny-sd15", "--base-quantization", "int8", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "base_quantization int8" in result.output and "set --lora-rank" in result.output
    assert not any(tmp_path.iterdir()), "nothing may be written before the check"


@pytest.mark.parametrize("quant,module,extra", [("int8", "torchao", "torchao"), ("fp8", "torchao", "torchao"),
                                                ("nf4", "bitsandbytes", "bnb")])
def test_missing_backend_fails_in_preflight_with_the_fix(monkeypatch, tmp_path, quant, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # find_spec -> None: not installed, whatever this machine has
    result = runner.invoke(app, ["train", "--model", "tiny-sd15", "--lora-rank", "2", "--base-quantization", quant,
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"--base-quantization {quant} needs the '{module}' package" in result.output
    assert f"pip install 'aifeedback[{extra}]'" in result.output
    assert not any(tmp_path.iterdir())


def test_nf4_without_a_gpu_fails_in_preflight(monkeypatch, tmp_path):
    import aifeedback.preflight

    monkeypatch.setattr(aifeedback.preflight, "check_package", lambda *a, **k: None)  # as if bitsandbytes were here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["train", "--model", "tiny-sd15", "--lora-rank", "2", "--base-quantization", "nf4",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "only on a CUDA GPU" in result.output and "--base-quantization int8 or fp8" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_two_process_lora_run_on_a_quantized_base(human, tmp_path):
    """DDP wraps the model: the quantized frozen weights must stay out of its start-up broadcast (torchao's tensors
    cannot be broadcast), and the first loss is still ln 2 in every process."""
    pytest.importorskip("torchao")
    import os
    from pathlib import Path

    from tests.launch import accelerate_launch, run_group

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    out = tmp_path / "ddp"
    cmd = [*accelerate_launch(2), "train", "--dataset", str(human), "--model", "tiny-sd15", "--lora-rank", "2",
           "--base-quantization", "int8", "--batch-size", "1", "--max-steps", "2", "--checkpoint-every", "2",
           "--validation-every", "0", "--num-workers", "0", "--trackers", "none", "--resolution", "16", "--lr",
           "1e-2", "--no-scale-lr", "--out", str(out)]
    res = run_group(cmd, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(out)]
    assert abs(losses[0] - math.log(2)) < 1e-6 and losses[1] != losses[0]


@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_quantized_base_under_fsdp_or_deepspeed_fails_in_preflight(monkeypatch, tmp_path, var):
    monkeypatch.setenv(var, "true")  # what `accelerate launch` sets for an FSDP / DeepSpeed config
    result = runner.invoke(app, ["train", "--model", "tiny-sd15", "--lora-rank", "2", "--base-quantization", "int8",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "would shard the quantized frozen weights" in result.output and "--multi_gpu" in result.output
    assert not any(tmp_path.iterdir())


def test_sample_refuses_a_quantized_base_under_a_whole_tuned_denoiser(tmp_path):
    from aifeedback.zoo import tiny_pipeline_path

    denoiser = tiny_pipeline_path("tiny-sd15") / "unet"
    result = runner.invoke(app, ["sample", "--model", "tiny-sd15", "--tuned", str(denoiser), "--base-quantization",
                                 "int8", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert "replaces its whole denoiser" in result.output and "--base-quantization none" in result.output


def test_bf16_run_on_a_quantized_unet_base_on_cpu(human, tmp_path):
    """On a CPU a quantized base is kept in fp32 around its int8 weights: torchao's layers return fp32 activations
    there, which the UNet's GroupNorm refuses next to bf16 weights (the run failed in its first step)."""
    pytest.importorskip("torchao")
    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", lora_rank=2, lr=1e-2, base_quantization="int8",
                         mixed_precision="bf16", max_steps=1, checkpoint_every=1))
    assert abs(read_metrics(out)[0]["loss"] - math.log(2)) < 1e-6
