"""`aif generate` and `aif eval` with --base-quantization (as `aif sample`; `aif rl`'s preflight too): the base
model's denoiser and text encoders loaded quantized (torchao int8 / fp8 on a CPU with the tiny models), nf4 refused
in preflight without a GPU, a whole tuned denoiser refused (it would load unquantized)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import aifeedback.stages.generate as generate_stage
from aifeedback.cli import app
from aifeedback.config import build_config
from aifeedback.families import detect
from aifeedback.families.quantize import is_quantized
from aifeedback.stages.evaluate import EvalConfig
from aifeedback.stages.evaluate import run as evaluate
from aifeedback.stages.generate import GenerateConfig
from aifeedback.stages.generate import run as generate
from aifeedback.storage.shards import shard_files

runner = CliRunner()


@pytest.fixture()
def loads(monkeypatch):
    """The (quantization argument, denoiser quantized, first text encoder quantized) of every pipeline aif generate
    loads."""
    seen, load = [], generate_stage.load_pipeline

    def spy(*args, **kw):
        pipe = load(*args, **kw)
        seen.append((kw.get("quantization"), is_quantized(getattr(pipe, detect(pipe).denoiser)),
                     is_quantized(pipe.text_encoder)))
        return pipe

    monkeypatch.setattr(generate_stage, "load_pipeline", spy)
    return seen


def _images(out):
    import pyarrow.parquet as pq

    rows = [r for f in shard_files(out) for r in pq.read_table(f, columns=["image"]).to_pylist()]
    return np.stack([np.asarray(Image.open(io.BytesIO(r["image"]))) for r in rows])


@pytest.mark.parametrize("model,quant", [("tiny-flux2", "int8"), ("tiny-sd15", "fp8")])
def test_generate_on_a_quantized_base(tmp_path, loads, model, quant):
    kw = dict(model=model, prompts="parti", limit=2, steps=2, resolution=32, image_format="png")
    generate(build_config(GenerateConfig, dict(kw, base_quantization=quant, out=str(tmp_path / "q"))))
    generate(build_config(GenerateConfig, dict(kw, out=str(tmp_path / "full"))))
    assert loads == [(quant, True, True), ("none", False, False)]
    quantized, full = _images(tmp_path / "q"), _images(tmp_path / "full")
    assert quantized.shape == full.shape and not (quantized == full).all()  # the quantized weights drew them


def test_eval_quantizes_both_models(tmp_path, loads, tiny_sd15):
    cfg = build_config(EvalConfig, dict(base=str(tiny_sd15), tuned=str(tiny_sd15), prompts="parti", limit=2,
                                        seeds_per_prompt=1, steps=2, resolution=16, scorers="redness", examples=1,
                                        sample_prompts=1, thumb=32, bootstrap=100, base_quantization="int8",
                                        out=str(tmp_path / "eval")))
    report = evaluate(cfg)
    assert loads == [("int8", True, True)] * 2
    assert report["scorers"]["redness"]["win_rate"] == 0.5  # the same quantized model on both sides


@pytest.mark.parametrize("stage", [["generate", "--model", "tiny-sd15"],
                                   ["eval", "--base", "tiny-sd15", "--tuned", "tiny-sd15", "--scorers", "redness"],
                                   ["rl", "--model", "tiny-sd3", "--reward", "redness"]])
def test_nf4_without_a_gpu_fails_in_preflight(monkeypatch, tmp_path, stage):
    import aifeedback.preflight

    monkeypatch.setattr(aifeedback.preflight, "check_package", lambda *a, **k: None)  # as if bitsandbytes were here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, [*stage, "--base-quantization", "nf4", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "only on a CUDA GPU" in result.output and "--base-quantization int8 or fp8" in result.output
    assert not (tmp_path / "out").exists()


def test_generate_refuses_a_quantized_base_under_a_whole_tuned_denoiser(tmp_path, tiny_sd15):
    result = runner.invoke(app, ["generate", "--model", "tiny-sd15", "--tuned", str(tiny_sd15 / "unet"),
                                 "--base-quantization", "int8", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "replaces its whole denoiser" in result.output and "or a LoRA as --tuned" in result.output
