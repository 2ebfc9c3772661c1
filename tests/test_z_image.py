"""The Z-Image family on tiny-z-image: the zoo model and the real sizes, conditioning and the denoiser call as
diffusers' ZImagePipeline computes them, the training step as diffusers' train_dreambooth_lora_z_image.py takes it,
and the stages: the first LoRA DPO loss ln 2, a LoRA file stock ZImagePipeline loads (slow: every stage)."""

import hashlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from aifeedback.errors import AifError

# ZImagePipeline.encode_prompt writes the chat-templated prompts into the list it is given: pass it copies
PROMPTS = ("a red cube on a table", "a blue bird in the sky")


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_tiny_z_image_is_deterministic_with_the_real_classes(tmp_path):
    from diffusers import AutoencoderKL, DiffusionPipeline, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Model

    from aifeedback.zoo import ZOO

    hashes = []
    for i in range(2):
        ZOO["tiny-z-image"].build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]  # the pad tokens the class leaves uninitialised included
    tokenizers = [sorted((p.name, p.read_bytes()) for p in (tmp_path / str(i) / "tokenizer").iterdir()) for i in (0, 1)]
    assert tokenizers[0] == tokenizers[1]
    assert isinstance(pipe, ZImagePipeline) and isinstance(pipe.transformer, ZImageTransformer2DModel)
    assert isinstance(pipe.text_encoder, Qwen3Model) and isinstance(pipe.tokenizer, Qwen2Tokenizer)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae.config.latent_channels == 16
    assert pipe.transformer.config.cap_feat_dim == pipe.text_encoder.config.hidden_size
    chat = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)
    assert chat == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"  # Qwen3's template for this turn


def test_real_size_z_image_holds_the_released_parameter_counts():
    """The published configs (zoo/tiny_z_image.py) build, on the meta device, the released parameter counts:
    Tongyi-MAI/Z-Image-Turbo's transformer 6,154,908,736 (the total its safetensors hold, as third-party records of
    the hub repo give it; the model card rounds to "6B") and its text encoder Qwen/Qwen3-4B 4,022,468,096 (the hub's
    safetensors total; tied embeddings, so Qwen3Model without the LM head holds them all). The VAE is FLUX.1's,
    counted in tests/test_bench.py."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from aifeedback.zoo.tiny_z_image import REAL_TEXT_ENCODER, REAL_TRANSFORMER

    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**REAL_TRANSFORMER)
        text_encoder = Qwen3Model(Qwen3Config(**REAL_TEXT_ENCODER))
    assert sum(p.numel() for p in transformer.parameters()) == 6_154_908_736
    assert sum(p.numel() for p in text_encoder.parameters()) == 4_022_468_096


@pytest.fixture(scope="module")
def pipe(aif_cache):
    from aifeedback.families.loading import load_pipeline

    return load_pipeline("tiny-z-image")


def _zimage():
    from aifeedback.families import get_family

    return get_family("z-image")


def test_detection_tells_z_image_from_the_other_families(pipe, aif_cache):
    from diffusers import Lumina2Transformer2DModel

    from aifeedback.families import UnsupportedModelError, detect
    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.sampling import default_guidance, default_size, default_steps

    fam = detect(pipe)
    assert fam.name == "z-image" and detect(pipe.transformer) is fam  # from the denoiser alone too
    assert fam.lora_pipeline is type(pipe) and fam.denoiser == "transformer"
    for other, name in (("tiny-flux-dev", "flux"), ("tiny-sd3", "sd3"), ("tiny-sd15", "sd15")):
        assert detect(load_pipeline(other)).name == name  # Z-Image's rule claims none of theirs
        assert not fam.matches(getattr(load_pipeline(other), detect(load_pipeline(other)).denoiser).config)
    # Lumina2's transformer (the other one with caption features, cap_feat_dim) is not taken for Z-Image
    config = dict(Lumina2Transformer2DModel(hidden_size=32, num_layers=1, num_refiner_layers=1, num_attention_heads=2,
                                            num_kv_heads=1, cap_feat_dim=16, axes_dim_rope=(4, 6, 6),
                                            axes_lens=(32, 32, 32), sample_size=8).config)
    assert "cap_feat_dim" in config and not fam.matches(config)
    with pytest.raises(UnsupportedModelError):
        detect(SimpleNamespace(transformer=SimpleNamespace(config=config)))
    # the pipeline's defaults: 50 steps, guidance 5.0, 1024 px (128 latent px at the real 8x VAE; 256 px here)
    assert (default_steps(pipe), default_guidance(pipe), default_size(pipe)) == (50, 5.0, 256)


@pytest.mark.numerics
def test_prompt_encoding_matches_z_image_pipeline(pipe):
    fam = _zimage()
    ours = fam.encode_prompts(fam.text_encoders(pipe), [*PROMPTS, ""])
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt([*PROMPTS, ""], do_classifier_free_guidance=False)
    assert ours["embeds"].shape == (3, 512, 32) and ours["mask"].dtype == torch.bool and negative == []
    cut = [e[m] for e, m in zip(ours["embeds"], ours["mask"], strict=True)]
    assert [c.shape[0] for c in cut] == [e.shape[0] for e in embeds]  # each prompt's unpadded tokens
    for a, b in zip(cut, embeds, strict=True):  # the same calls on the same batch
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.numerics
def test_prediction_is_the_velocity_z_image_pipeline_steps_with(pipe):
    """One Euler step of ZImagePipeline from sigma 1 to 0 (no guidance) moves the latents by -v: v must be what the
    family predicts for the same noise at timestep 1000 (list layout, the reversed timestep, the negated output)."""
    fam = _zimage()
    noise = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    out = pipe(list(PROMPTS), num_inference_steps=1, guidance_scale=0.0, height=32, width=32, latents=noise.clone(),
               output_type="latent").images
    prompts = fam.encode_prompts(fam.text_encoders(pipe), list(PROMPTS))
    with torch.no_grad():
        v = fam.predict(pipe.transformer, noise, torch.full((2,), 1000.0), prompts, None)
    torch.testing.assert_close(v, noise - out, rtol=1e-5, atol=1e-5)  # float32: the step's subtraction rounds
    with pytest.raises(AifError, match="multiple of 16"):  # odd latent sides cannot be patchified
        fam.predict(pipe.transformer, noise[..., :15, :15], torch.full((2,), 1000.0), prompts, None)


@pytest.mark.numerics
def test_render_decodes_what_z_image_pipeline_decodes(pipe):
    from aifeedback.families.sampling import render

    ours = render(pipe, PROMPTS, [3, 4], steps=2, width=32, height=32, return_latents=True)  # guidance 5.0: CFG
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    ref = pipe(list(PROMPTS), num_inference_steps=2, height=32, width=32, generator=gens).images
    for a, b in zip(ours.images, ref, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1  # uint8 rounding
    assert ours.latents.shape == (2, 16, 16, 16)


@pytest.mark.numerics
def test_training_step_is_the_z_image_scripts(pipe):
    """train_dreambooth_lora_z_image.py's documented steps, re-derived here with its defaults (weighting "none"):
    latents (mode() - shift) * scale; noise = randn_like; u = rand(n); index = int(u * 1000); timestep =
    scheduler.timesteps[index] and its sigma; x_t = (1 - sigma) x0 + sigma noise; target = noise - x0; model_pred =
    -transformer(list of (C, 1, h, w), (1000 - t) / 1000, encode_prompt's list)[0] stacked; weighting 1. For DPO,
    winners and losers share the noise and the timestep."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from aifeedback.zoo import tiny_pipeline_path

    fam = _zimage()
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 2 winners, 2 losers
    x0 = fam.encode_images(pipe.vae, pixels)
    with torch.no_grad():
        dist = pipe.vae.encode(pixels).latent_dist
    torch.testing.assert_close(x0, (dist.mode() - 0.1159) * 0.3611, rtol=0, atol=0)
    sched = fam.noise_scheduler(pipe)
    assert sched.config.shift == 3.0 and sched is not pipe.scheduler
    torch.manual_seed(7)
    noisy, t, target = fam.training_noise(sched, x0, groups=2)
    ref = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_pipeline_path("tiny-z-image"), subfolder="scheduler")
    torch.manual_seed(7)
    noise = torch.randn_like(x0[:2])
    timesteps = ref.timesteps[(torch.rand(2) * ref.config.num_train_timesteps).long()]
    sigma = ref.sigmas[[(ref.timesteps == s).nonzero().item() for s in timesteps]].view(-1, 1, 1, 1)
    assert torch.equal(t, timesteps.repeat(2))
    winners, losers = (1 - sigma) * x0[:2] + sigma * noise, (1 - sigma) * x0[2:] + sigma * noise
    torch.testing.assert_close(noisy, torch.cat([winners, losers]), rtol=0, atol=0)
    assert torch.equal(target, torch.cat([noise - x0[:2], noise - x0[2:]]))
    assert torch.equal(fam.loss_weights(sched, t), torch.ones(4))
    captions = [*PROMPTS, *PROMPTS]
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(list(captions), max_sequence_length=512)
        ours = fam.predict(pipe.transformer, noisy, t, fam.encode_prompts(fam.text_encoders(pipe), captions), None)
        pred = pipe.transformer(list(noisy.unsqueeze(2).unbind(0)), (1000 - t) / 1000, embeds, return_dict=False)[0]
    torch.testing.assert_close(ours, -torch.stack(pred, dim=0).squeeze(2), rtol=0, atol=0)


def test_lora_targets_are_the_scripts(pipe):
    from peft import LoraConfig

    fam = _zimage()
    assert fam.lora_targets == ("to_k", "to_q", "to_v", "to_out.0")  # the script's default target_modules
    names = [n for n, _ in pipe.transformer.named_modules()]
    for target in fam.lora_targets:  # every stream's attention: noise refiner, context refiner, main layers
        for stream in ("noise_refiner", "context_refiner", "layers"):
            assert any(n.startswith(stream + ".") and n.endswith(".attention." + target) for n in names), target
    model = type(pipe.transformer).from_config(pipe.transformer.config)
    model.add_adapter(LoraConfig(r=2, target_modules=list(fam.lora_targets)))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted and all(".attention." in n for n in adapted)


def test_z_image_turbo_samples_with_its_distilled_defaults():
    from aifeedback.families.resolve import KNOWN_MODELS, model_defaults

    assert "Tongyi-MAI/Z-Image" in KNOWN_MODELS and "Tongyi-MAI/Z-Image-Turbo" in KNOWN_MODELS
    turbo = model_defaults("Tongyi-MAI/Z-Image-Turbo")
    assert (turbo.steps, turbo.guidance) == (8, 0.0)
    assert model_defaults("Tongyi-MAI/Z-Image").steps is None  # the base keeps the pipeline's 50 steps, guidance 5


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    from tests.pairs_fixtures import pickapic_rows, write_pickapic

    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(4))


@pytest.mark.numerics
def test_lora_dpo_first_loss_is_ln2_and_stock_z_image_pipeline_loads_the_file(human, tmp_path, pipe):
    from diffusers import ZImagePipeline

    from aifeedback.zoo import tiny_pipeline_path
    from tests.family_checks import lora_dpo_two_steps, stock_lora_changes_images

    folder, keys = lora_dpo_two_steps(human, tmp_path / "run", "tiny-z-image")
    assert {k.split(".")[1] for k in keys} == {"noise_refiner", "context_refiner", "layers"}
    stock_lora_changes_images(ZImagePipeline.from_pretrained(tiny_pipeline_path("tiny-z-image")), folder, keys,
                              PROMPTS[0])


@pytest.mark.slow
def test_every_stage_on_tiny_z_image(tmp_path):
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    from aifeedback.zoo import tiny_pipeline_path
    from tests.golden import aif
    from tests.pairs_fixtures import read_metrics

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([*PROMPTS, "a green tree by a lake"]) + "\n")
    gen, pairs, size = tmp_path / "gen", tmp_path / "pairs", ["--resolution", "32"]
    common = ["--steps", "2", "--batch-size", "2", *size]
    aif("generate", "--model", "tiny-z-image", "--prompts", str(prompts), "--images-per-prompt", "3", *common,
        "--save-latents", "--out", str(gen))
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness", "--workers", "0", "--no-progress")
    train = ["train", "--model", "tiny-z-image", "--data", "ai", "--dataset", str(pairs), "--max-steps", "2", *size,
             "--batch-size", "2", "--no-scale-lr", "--checkpoint-every", "2", "--validation-every", "0",
             "--num-workers", "0", "--trackers", "none"]
    aif(*train, "--lora-rank", "4", "--lr", "1e-2", "--out", str(tmp_path / "lora"))
    aif(*train, "--lr", "1e-3", "--out", str(tmp_path / "full"))
    for run_dir in ("lora", "full"):
        assert abs(read_metrics(tmp_path / run_dir)[0]["loss"] - math.log(2)) < 1e-6
    aif("export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-x"))
    aif("export", str(tmp_path / "full"), "--out", str(tmp_path / "full-x"))

    # Stock diffusers: the exported LoRA and transformer load with Z-Image's own classes and change the images.
    base = ZImagePipeline.from_pretrained(tiny_pipeline_path("tiny-z-image"))
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    before = base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    base.load_lora_weights(str(tmp_path / "lora-x"))
    assert not (base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()
    transformer = ZImageTransformer2DModel.from_pretrained(tmp_path / "full-x", subfolder="transformer")
    full = ZImagePipeline.from_pretrained(tiny_pipeline_path("tiny-z-image"), transformer=transformer)
    assert not (full(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()

    aif("sample", "--model", "tiny-z-image", "--tuned", str(tmp_path / "lora-x"), "--prompts", str(prompts), *size,
        "--limit", "2", "--steps", "2", "--no-grid", "--out", str(tmp_path / "sample"))
    assert len(list((tmp_path / "sample").rglob("*.png"))) == 2
    aif("eval", "--base", "tiny-z-image", "--tuned", str(tmp_path / "full"), "--prompts", str(prompts), *size,
        "--seeds-per-prompt", "2", "--steps", "2", "--scorers", "redness", "--bootstrap", "100",
        "--out", str(tmp_path / "eval"))
    assert (tmp_path / "eval" / "report.json").exists()


def test_tuned_z_image_transformer_must_fit_its_base(tmp_path):
    from diffusers import AutoModel

    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.resolve import TunedLoadError
    from aifeedback.zoo import tiny_pipeline_path

    config = dict(AutoModel.load_config(tiny_pipeline_path("tiny-z-image"), subfolder="transformer"), n_layers=1)
    shallower = tmp_path / "transformer"
    AutoModel.from_config(config).save_pretrained(shallower)
    with pytest.raises(TunedLoadError, match="transformer n_layers is 1, the base has 2"):
        load_pipeline("tiny-z-image", tuned=str(shallower))
