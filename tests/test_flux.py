"""The FLUX family on tiny-flux (schnell-like) and tiny-flux-dev (guidance embedding): the zoo models, conditioning
and the denoiser call as diffusers' FluxPipeline computes them, and (slow) every stage: generate -> score -> train
(LoRA, full) -> export -> stock diffusers -> sample / eval, the first loss ln 2, resume."""

import hashlib

import numpy as np
import pytest
import torch

PROMPTS = ["a red cube on a table", "a blue bird in the sky"]


def _flux():
    from aifeedback.families import get_family

    return get_family("flux")


@pytest.fixture(scope="module")
def pipes(aif_cache):
    from aifeedback.families.loading import load_pipeline

    return {name: load_pipeline(name) for name in ("tiny-flux", "tiny-flux-dev")}


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_tiny_flux_is_deterministic_with_the_real_classes(tmp_path):
    """Built twice, same weights (tiny-flux is the same builder without the guidance embedder)."""
    from diffusers import DiffusionPipeline, FluxPipeline, FluxTransformer2DModel
    from transformers import T5EncoderModel

    from aifeedback.zoo import ZOO

    name, hashes = "tiny-flux-dev", []
    for i in range(2):
        ZOO[name].build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]
    assert isinstance(pipe, FluxPipeline) and isinstance(pipe.transformer, FluxTransformer2DModel)
    assert isinstance(pipe.text_encoder_2, T5EncoderModel) and pipe.vae.config.latent_channels == 16
    assert pipe.transformer.config.guidance_embeds


def test_detection_tells_flux_from_the_other_families(pipes, aif_cache):
    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline

    assert {detect(p).name for p in pipes.values()} == {"flux"}
    assert not pipes["tiny-flux"].transformer.config.guidance_embeds  # schnell-like
    assert detect(pipes["tiny-flux"].transformer).name == "flux"  # from the denoiser alone too
    assert detect(load_pipeline("tiny-sd3")).name == "sd3"


def test_prompt_encoding_matches_flux_pipeline(pipes):
    fam, pipe = _flux(), pipes["tiny-flux-dev"]
    ours = fam.encode_prompts(fam.text_encoders(pipe), PROMPTS)
    with torch.no_grad():  # as encode_prompts runs (with autograd on, T5's attention takes another kernel: ~2e-5)
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, prompt_2=None, max_sequence_length=512)
    # same modules, same inputs, same order of operations: equal up to float32 rounding
    torch.testing.assert_close(ours["embeds"], embeds, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours["pooled"], pooled, rtol=1e-6, atol=1e-6)
    assert not text_ids.any()  # FLUX's text position ids are zeros: predict builds them so


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-flux-dev"])
def test_prediction_is_the_velocity_flux_pipeline_steps_with(pipes, name):
    """One Euler step of FluxPipeline from sigma 1 to 0 moves the packed latents by -v: unpacked, v must be what
    the family predicts for the same noise at timestep 1000 (packing, position ids, timestep scale, and for dev the
    guidance embedding at the pipeline's 3.5, the value training passes too)."""
    from diffusers import FluxPipeline

    fam, pipe = _flux(), pipes[name]
    noise = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    packed = FluxPipeline._pack_latents(noise, 2, 16, 16, 16)
    out = pipe(PROMPTS, num_inference_steps=1, guidance_scale=3.5, height=32, width=32, latents=packed,
               output_type="latent").images
    v_pipe = FluxPipeline._unpack_latents(packed - out, 32, 32, pipe.vae_scale_factor)
    prompts = fam.encode_prompts(fam.text_encoders(pipe), PROMPTS)
    with torch.no_grad():
        v = fam.predict(pipe.transformer, noise, torch.full((2,), 1000.0), prompts, None)
    torch.testing.assert_close(v, v_pipe, rtol=1e-5, atol=1e-5)  # float32: the step's subtraction rounds


def test_render_decodes_what_flux_pipeline_decodes(pipes):
    from aifeedback.families.sampling import render

    pipe = pipes["tiny-flux-dev"]
    ours = render(pipe, PROMPTS, [3, 4], steps=2, guidance=3.5, width=32, height=32, return_latents=True)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    ref = pipe(PROMPTS, num_inference_steps=2, guidance_scale=3.5, height=32, width=32, generator=gens).images
    for a, b in zip(ours.images, ref, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1  # uint8 rounding
    assert ours.latents.shape == (2, 16, 16, 16)  # unpacked: the space training encodes images into


def test_lora_targets_are_the_transformer_layers_diffusers_adapts(pipes):
    from peft import LoraConfig

    fam = _flux()
    transformer = pipes["tiny-flux"].transformer
    names = [n for n, _ in transformer.named_modules()]
    for target in fam.lora_targets:  # every target names a layer of FluxTransformer2DModel (peft matches suffixes)
        assert any(n.endswith("." + target) for n in names), target
    model = type(transformer).from_config(transformer.config)
    model.add_adapter(LoraConfig(r=2, target_modules=list(fam.lora_targets)))
    assert any("lora_A" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("config, model", [("fsdp_flux_8gpu.yaml", "tiny-flux-dev"),
                                           ("fsdp_sd35_8gpu.yaml", "tiny-sd3")])
def test_fsdp_configs_wrap_every_transformer_block(config, model, aif_cache):
    """The shipped FSDP configs name classes accelerate finds in the family's transformer (it refuses a missing one)
    and that cover every block, so each block is one FSDP unit."""
    from pathlib import Path

    import yaml
    from accelerate.utils.dataclasses import get_module_class_from_name

    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline

    path = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / config
    fsdp = yaml.safe_load(path.read_text())["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    pipe = load_pipeline(model)
    transformer = getattr(pipe, detect(pipe).denoiser)
    classes = tuple(get_module_class_from_name(transformer, name)
                    for name in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","))
    assert None not in classes
    blocks = [b for name in ("transformer_blocks", "single_transformer_blocks")
              for b in getattr(transformer, name, [])]
    assert blocks and all(isinstance(b, classes) for b in blocks)
