"""`aif export`: checkpoints -> files diffusers loads (UNet folder, LoRA file, whole pipeline), then sampling."""

import pytest
import torch

from aifeedback.errors import AifError
from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from aifeedback.stages.train import run

    root = tmp_path_factory.mktemp("runs")
    data = write_pickapic(root / "data", pickapic_rows(4))
    full = run(tiny_train(data, root / "full", max_steps=1, checkpoint_every=1, lr=1e-3))
    lora = run(
        tiny_train(data, root / "lora", model="tiny-sdxl", lora_rank=2, max_steps=1, checkpoint_every=1, lr=1e-2)
    )
    return full, lora


def _export(**kw):
    from aifeedback.config import build_config
    from aifeedback.stages.export import ExportConfig, run

    return run(build_config(ExportConfig, kw))


def test_full_export_loads_with_from_pretrained_and_samples(runs, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from aifeedback.families.loading import load_pipeline

    out = _export(checkpoint=str(runs[0]), out=str(tmp_path / "unet"))  # a run folder -> its latest checkpoint
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    trained = load_file(runs[0] / "checkpoints/checkpoint-000001/unet/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(v, trained[k]) for k, v in unet.state_dict().items())
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # safetensors only
    pipe = load_pipeline("tiny-sd15")
    pipe.unet = unet
    img = pipe("a red cat", height=16, width=16, num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 16, 16, 3) and img.std() > 0


def test_lora_export_loads_with_load_lora_weights_and_changes_samples(runs, tmp_path):
    from aifeedback.families.loading import load_pipeline

    out = _export(checkpoint=str(runs[1] / "checkpoints" / "checkpoint-000001"), out=str(tmp_path / "lora"))
    assert (out / "pytorch_lora_weights.safetensors").exists()
    pipe = load_pipeline("tiny-sdxl")
    kw = dict(height=16, width=16, num_inference_steps=2, output_type="np")
    base = pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(str(out))
    tuned = pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw).images
    assert tuned.shape == base.shape and not (tuned == base).all()


def test_pipeline_export_with_fused_lora(runs, tmp_path):
    from diffusers import DiffusionPipeline

    out = _export(checkpoint=str(runs[1]), out=str(tmp_path / "pipe"), pipeline=True, dtype="float16")
    from safetensors.torch import load_file

    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    weights = load_file(next((out / "unet").glob("*.safetensors")))
    assert all(v.dtype == torch.float16 for v in weights.values())
    assert not any("lora" in k for k in weights)  # fused into the base weights


def test_export_errors(tmp_path):
    with pytest.raises(AifError, match="neither a training checkpoint"):
        _export(checkpoint=str(tmp_path), out=str(tmp_path / "x"))
    from aifeedback.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint"):
        _export(out=str(tmp_path / "x"))


def test_lora_export_is_byte_stable(runs, tmp_path):
    """safetensors writes header metadata in a random order per map: two exports of one LoRA are byte-equal only
    because export sorts it (a checkpoint with eight metadata keys: 1 in 40320 orders is sorted by chance)."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "checkpoint-000001"
    shutil.copytree(runs[1] / "checkpoints" / "checkpoint-000001", ckpt)
    lora = ckpt / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora), "pt") as f:
        meta = dict(f.metadata(), **{f"note_{c}": c for c in "hgfedcb"})
    save_file(load_file(lora), str(lora), metadata=meta)
    outs = [_export(checkpoint=str(ckpt), out=str(tmp_path / f"e{i}")) / "pytorch_lora_weights.safetensors"
            for i in range(2)]
    assert outs[0].read_bytes() == outs[1].read_bytes()
    size = int.from_bytes(outs[0].read_bytes()[:8], "little")
    keys = list(json.loads(outs[0].read_bytes()[8:8 + size])["__metadata__"])
    assert keys == sorted(keys) and len(keys) == 9
