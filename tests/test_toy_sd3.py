"""toy-sd3, the toy world's flow-matching model: a deterministic build of a StableDiffusion3Pipeline that every stage
loads as the sd3 family, and `aif demo --model` choosing among the zoo's toy models."""

import hashlib

import pytest
import torch

from aifeedback.config import ConfigError, build_config


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


def test_build_is_deterministic_and_an_sd3_pipeline(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from aifeedback.families import detect
    from aifeedback.families.sampling import default_size
    from aifeedback.zoo.toy_sd3 import build_toy_sd3
    from aifeedback.zoo.toy_world import SIZE

    # The real build is the same code with more steps; two short builds must give byte-identical weights.
    build_toy_sd3(tmp_path / "a", steps=2, vae_steps=2)
    build_toy_sd3(tmp_path / "b", steps=2, vae_steps=2)
    digest = _digest(tmp_path / "a")
    assert {"transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"} <= set(digest)
    assert digest == _digest(tmp_path / "b")
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "a")
    assert detect(pipe).name == "sd3" and default_size(pipe) == SIZE and pipe.vae.config.shift_factor == 0.0
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red disc on a blue background", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, SIZE, SIZE, 3)


def test_demo_model_choices_come_from_the_zoo():
    from aifeedback.stages.demo_config import DemoConfig
    from aifeedback.zoo import toy_models

    assert toy_models() == ("toy-sd15", "toy-sd3") and DemoConfig().model == "toy-sd15"
    assert build_config(DemoConfig, {"model": "toy-sd3"}).model == "toy-sd3"
    with pytest.raises(ConfigError, match="toy-sd15.*toy-sd3"):
        build_config(DemoConfig, {"model": "tiny-sdxl"})
