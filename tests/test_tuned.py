"""`load_pipeline(..., tuned=...)`: LoRA files/folders, UNet and pipeline folders, training run directories."""

import numpy as np
import pytest
import torch

from aifeedback.families.loading import load_pipeline
from aifeedback.families.resolve import TunedLoadError, resolve_tuned
from aifeedback.families.sampling import render
from aifeedback.storage.checkpoints import latest_checkpoint

PROMPTS, SEEDS = ["a red cat", "a blue dog"], [1, 2]


def pixels(pipe):
    return np.stack([np.asarray(im, dtype=np.int16) for im in render(pipe, PROMPTS, SEEDS, steps=2).images])


def close(a, b):
    return np.abs(a - b).max() <= 1


@pytest.fixture(scope="module")
def base(tiny_sdxl):
    return pixels(load_pipeline("tiny-sdxl"))


@pytest.fixture(scope="module")
def lora_dir(tiny_sdxl, tmp_path_factory):
    """A random (non-zero) LoRA made with peft on the tiny UNet, saved with diffusers' LoRA saver."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline("tiny-sdxl")
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    out = tmp_path_factory.mktemp("lora")
    StableDiffusionXLPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)))
    return out, pixels(pipe)


@pytest.fixture(scope="module")
def unet_dir(tiny_sdxl, tmp_path_factory):
    """A perturbed copy of the tiny UNet saved with save_pretrained, in a pipeline-style folder (unet/)."""
    pipe = load_pipeline("tiny-sdxl")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("tuned")
    pipe.unet.save_pretrained(out / "unet")
    return out, pixels(pipe)


def test_lora_file_and_folder(base, lora_dir):
    folder, expected = lora_dir
    assert not close(expected, base)  # the LoRA changes the images, so the checks below can fail
    for tuned in (folder, folder / "pytorch_lora_weights.safetensors"):
        assert resolve_tuned(str(tuned))[0] == "lora"
        assert close(pixels(load_pipeline("tiny-sdxl", tuned=str(tuned))), expected)


def test_unet_folder_and_pipeline_folder(base, unet_dir):
    folder, expected = unet_dir
    assert not close(expected, base)
    for tuned in (folder, folder / "unet"):
        assert resolve_tuned(str(tuned)) == ("unet", str(folder / "unet"))
        assert close(pixels(load_pipeline("tiny-sdxl", tuned=str(tuned))), expected)


def test_training_run_dir_uses_latest_checkpoint(tmp_path, lora_dir, unet_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(unet_dir[0] / "unet", run / "checkpoints" / "checkpoint-000900" / "unet")
    shutil.copytree(lora_dir[0], run / "checkpoints" / "checkpoint-001000")
    (run / "checkpoints" / "checkpoint-000950").mkdir()  # highest of the lower ones, but the numbers decide
    assert latest_checkpoint(run).name == "checkpoint-001000"
    weights = run / "checkpoints" / "checkpoint-001000" / "pytorch_lora_weights.safetensors"
    assert resolve_tuned(str(run)) == ("lora", str(weights))
    assert close(pixels(load_pipeline("tiny-sdxl", tuned=str(run))), lora_dir[1])


def test_bad_tuned_paths(tmp_path, tiny_sd15, unet_dir):
    with pytest.raises(TunedLoadError, match="does not exist"):
        load_pipeline("tiny-sdxl", tuned=str(tmp_path / "missing.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunedLoadError, match="holds neither"):
        load_pipeline("tiny-sdxl", tuned=str(tmp_path / "empty"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(TunedLoadError, match="no checkpoints/checkpoint-NNNNNN/"):
        load_pipeline("tiny-sdxl", tuned=str(tmp_path / "run"))
    with pytest.raises(TunedLoadError, match="does not fit base model"):  # an SDXL UNet on an SD1.5 base
        load_pipeline("tiny-sd15", tuned=str(unet_dir[0]))
