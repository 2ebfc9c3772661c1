"""The model-family registry: detection from the tiny models, the error for other models, and what each family
hands the denoiser (conditioning shapes, micro-conditioning, training noise, LoRA layers, VAE dtype)."""

from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def pipes(tiny_sd15, tiny_sdxl):
    from aifeedback.families.loading import load_pipeline

    return {"sd15": load_pipeline("tiny-sd15"), "sdxl": load_pipeline("tiny-sdxl"),
            "sdxl-refiner": load_pipeline("tiny-sdxl-refiner")}


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sdxl-refiner"])
def test_detect_pipeline_and_its_unet(pipes, name):
    from aifeedback.families import detect, family, get_family

    pipe = pipes[name]
    assert detect(pipe) is get_family(name) and family(pipe) == name
    assert detect(pipe.unet) is get_family(name)


def test_registry_lists_every_family_once():
    from aifeedback.families import FAMILIES, get_family

    assert list(FAMILIES) == ["sd15", "sdxl", "sdxl-refiner", "sd3", "flux", "z-image", "qwen-image", "flux2"]
    for name, help in FAMILIES.describe().items():  # each entry loads its family, which carries the entry's name
        assert help and get_family(name).name == name and get_family(name).help == help


@pytest.mark.parametrize("conditioning", ["text", "image", "text_image"])
def test_unknown_conditioning_names_the_supported_families(pipes, conditioning):
    from aifeedback.families import UnsupportedModelError, detect

    config = {**pipes["sd15"].unet.config, "addition_embed_type": conditioning}
    with pytest.raises(UnsupportedModelError) as err:
        detect(SimpleNamespace(unet=SimpleNamespace(config=config)))
    msg = str(err.value)
    assert f"'{conditioning}'" in msg and "sd15" in msg and "sdxl" in msg


def test_model_without_denoiser_is_refused():
    from aifeedback.errors import AifError
    from aifeedback.families import detect

    with pytest.raises(AifError, match="no denoiser.*sd15.*sdxl"):
        detect(object())


def test_unknown_family_name_suggests_the_closest():
    from aifeedback.families import get_family
    from aifeedback.registry import UnknownNameError

    with pytest.raises(UnknownNameError,
                       match="Did you mean 'sdxl'.*valid: sd15, sdxl, sdxl-refiner, sd3, flux, z-image, qwen-image, "
                             "flux2"):
        get_family("sdx")


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_conditioning_shapes_and_prediction(pipes, name):
    from aifeedback.families import detect

    pipe = pipes[name]
    fam = detect(pipe)
    prompts = fam.encode_prompts(fam.text_encoders(pipe), ["a red cube", "a blue bird", ""])
    unet = pipe.unet.config
    assert prompts["embeds"].shape == (3, pipe.tokenizer.model_max_length, unet.cross_attention_dim)
    if name == "sdxl":  # the second encoder's pooled projection feeds the added text_time embedding
        assert set(prompts) == {"embeds", "pooled"}
        assert prompts["pooled"].shape == (3, pipe.text_encoder_2.config.projection_dim)
    else:
        assert set(prompts) == {"embeds"}
    size = unet.sample_size
    latents = torch.randn(3, unet.in_channels, size, size)
    micro = torch.tensor([[size, size, 0, 0, size, size]] * 3, dtype=torch.float32)
    with torch.no_grad():
        out = fam.predict(pipe.unet, latents, torch.tensor([10, 500, 900]), prompts, micro)
    assert out.shape == latents.shape


def test_sdxl_uses_the_micro_conditioning_and_sd15_ignores_it(pipes):
    from aifeedback.families import detect

    outs = {}
    for name in ("sd15", "sdxl"):
        pipe = pipes[name]
        fam = detect(pipe)
        prompts = fam.encode_prompts(fam.text_encoders(pipe), ["a red cube"])
        z = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
        ids = [torch.tensor([[8.0, 8, 0, 0, 8, 8]]), torch.tensor([[64.0, 48, 5, 7, 8, 8]])]
        with torch.no_grad():
            outs[name] = [fam.predict(pipe.unet, z, torch.tensor([500]), prompts, i) for i in ids]
    assert torch.equal(*outs["sd15"])
    assert not torch.allclose(*outs["sdxl"])  # different original size and crop: a different prediction
    with pytest.raises(ValueError, match="time ids"):
        detect(pipes["sdxl"]).predict(pipes["sdxl"].unet, z, torch.tensor([500]), prompts, None)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sdxl-refiner"])
def test_training_noise_is_shared_across_groups(pipes, name):
    from aifeedback.families import detect

    fam = detect(pipes[name])
    sched = fam.noise_scheduler(pipes[name])
    latents = torch.randn(6, 4, 8, 8)
    noisy, t, target = fam.training_noise(sched, latents, groups=2)
    assert noisy.shape == target.shape == latents.shape and t.shape == (6,)
    assert torch.equal(t[:3], t[3:])
    assert torch.equal(target[:3], target[3:])  # epsilon targets: the noise itself, one per pair


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sdxl-refiner"])
def test_family_facts(pipes, name):
    from aifeedback.families import detect
    from aifeedback.families.sampling import default_guidance

    pipe = pipes[name]
    fam = detect(pipe)
    modules = [n for n, _ in pipe.unet.named_modules()]
    for target in fam.lora_targets:  # every LoRA target names attention layers of the real architecture
        assert any(n.endswith(target) for n in modules), target
    assert isinstance(pipe, fam.lora_pipeline)
    assert default_guidance(pipe) == fam.guidance == {"sd15": 7.5, "sdxl": 5.0, "sdxl-refiner": 5.0}[name]
    assert fam.resolution == {"sd15": 512, "sdxl": 1024, "sdxl-refiner": 1024}[name]


def test_vae_dtype_rule():
    from aifeedback.families import get_family

    sd15, sdxl = get_family("sd15"), get_family("sdxl")
    assert sdxl.vae_dtype(torch.float16, custom_vae=False) == torch.float32  # the stock SDXL VAE overflows in fp16
    assert sdxl.vae_dtype(torch.float16, custom_vae=True) == torch.float16  # e.g. madebyollin/sdxl-vae-fp16-fix
    assert sdxl.vae_dtype(torch.bfloat16, custom_vae=False) == torch.bfloat16
    assert sd15.vae_dtype(torch.float16, custom_vae=False) == torch.float16
