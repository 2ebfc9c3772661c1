"""--vae (an override VAE) for every family: the VAE class the base model's pipeline holds (AutoencoderKLFlux2,
AutoencoderKLQwenImage, AutoencoderKL), refused with the reason when it is of another class."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from aifeedback.families.loading import load_pipeline
from aifeedback.families.resolve import ModelLoadError
from aifeedback.zoo import tiny_pipeline_path


@pytest.mark.parametrize("model, cls", [("tiny-flux2", "AutoencoderKLFlux2"),
                                        ("tiny-qwen-image", "AutoencoderKLQwenImage"),
                                        ("tiny-z-image", "AutoencoderKL")])
def test_vae_override_loads_the_families_own_vae_class(tmp_path, model, cls):
    vae = tmp_path / "vae"
    vae.mkdir()
    source = tiny_pipeline_path(model) / "vae"
    (vae / "config.json").write_text((source / "config.json").read_text())
    weights = {k: v + 1.0 if v.is_floating_point() else v
               for k, v in load_file(source / "diffusion_pytorch_model.safetensors").items()}
    save_file(weights, vae / "diffusion_pytorch_model.safetensors")  # a different VAE of the same class
    pipe = load_pipeline(model, vae=str(vae))
    assert type(pipe.vae).__name__ == cls
    name, param = next(iter(pipe.vae.state_dict().items()))
    assert torch.equal(param, weights[name])  # the override's weights, not the model's own


def test_a_vae_of_another_class_is_refused_naming_both_classes():
    other = str(tiny_pipeline_path("tiny-sd3") / "vae")
    with pytest.raises(ModelLoadError, match=r"is of class AutoencoderKL, but tiny-flux2 decodes with class "
                                             r"AutoencoderKLFlux2.*Fix: pass a AutoencoderKLFlux2"):
        load_pipeline("tiny-flux2", vae=other)


@pytest.mark.parametrize("stage", [["generate"], ["train", "--lora-rank", "2"],
                                   ["cache", "--dataset", "pairs"]])
def test_a_vae_of_another_class_is_refused_in_preflight(tmp_path, stage):
    """Before any model loads: the classes are read from model_index.json and the VAE's config.json."""
    from typer.testing import CliRunner

    from aifeedback.cli import app

    other = str(tiny_pipeline_path("tiny-sd3") / "vae")
    result = CliRunner().invoke(app, [*stage, "--model", "tiny-qwen-image", "--vae", other, "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "is of class AutoencoderKL, but tiny-qwen-image decodes with class AutoencoderKLQwenImage" in result.output
    assert not (tmp_path / "out").exists()
