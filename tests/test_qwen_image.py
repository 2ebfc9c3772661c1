"""The Qwen-Image family on tiny-qwen-image: the zoo model and the real sizes, conditioning and the denoiser call as
diffusers' QwenImagePipeline computes them, the training step as diffusers' train_dreambooth_lora_qwen_image.py takes
it, and the stages: the first LoRA DPO loss ln 2, a LoRA file stock QwenImagePipeline loads (slow: every stage)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from aifeedback.errors import AifError
from tests.test_z_image import _weights_hash

PROMPTS = ("a red cube on a table", "a blue bird in the sky")


def test_tiny_qwen_image_is_deterministic_with_the_real_classes(tmp_path):
    from diffusers import AutoencoderKLQwenImage, DiffusionPipeline, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    from aifeedback.zoo import ZOO

    hashes = []
    for i in range(2):
        ZOO["tiny-qwen-image"].build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]
    assert isinstance(pipe, QwenImagePipeline) and isinstance(pipe.transformer, QwenImageTransformer2DModel)
    assert isinstance(pipe.text_encoder, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(pipe.tokenizer, Qwen2Tokenizer) and isinstance(pipe.vae, AutoencoderKLQwenImage)
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder.config.text_config.hidden_size
    assert pipe.vae.config.z_dim * 4 == pipe.transformer.config.in_channels  # 2x2 packed latents
    assert pipe.vae_scale_factor == 2 and pipe.scheduler.config.use_dynamic_shifting


def test_real_size_qwen_image_holds_the_released_parameter_counts():
    """The published configs (zoo/tiny_qwen_image.py) build, on the meta device, the released sizes: the transformer
    20,430,401,088 parameters (Qwen-Image's "20B MMDiT"; third-party hardware guides give "20.4B") and its text
    encoder Qwen/Qwen2.5-VL-7B-Instruct 8,292,166,656 (the hub's "8.29B params": the whole
    Qwen2_5_VLForConditionalGeneration, vision tower of 676,550,144 and untied LM head included, as the pipeline
    loads it). The VAE (AutoencoderKLQwenImage's defaults, Wan 2.1's layout) is counted as built: 126,892,531."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from aifeedback.zoo.tiny_qwen_image import REAL_TEXT_ENCODER, REAL_TRANSFORMER, REAL_VAE

    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**REAL_TRANSFORMER)
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**REAL_TEXT_ENCODER))
        vae = AutoencoderKLQwenImage(**REAL_VAE)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(transformer) == 20_430_401_088 and round(count(transformer) / 1e9, 1) == 20.4
    assert count(text_encoder) == 8_292_166_656 and round(count(text_encoder) / 1e9, 2) == 8.29
    assert count(text_encoder.model.visual) == 676_550_144
    assert count(vae) == 126_892_531


@pytest.fixture(scope="module")
def pipe(aif_cache):
    from aifeedback.families.loading import load_pipeline

    return load_pipeline("tiny-qwen-image")


def _qwen():
    from aifeedback.families import get_family

    return get_family("qwen-image")


def test_detection_tells_qwen_image_from_the_other_families(pipe, aif_cache):
    from aifeedback.families import UnsupportedModelError, detect, get_family
    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.resolve import KNOWN_MODELS, model_defaults
    from aifeedback.families.sampling import default_guidance, default_size, default_steps

    fam = detect(pipe)
    assert fam.name == "qwen-image" and detect(pipe.transformer) is fam  # from the denoiser alone too
    assert fam.lora_pipeline is type(pipe) and fam.denoiser == "transformer"
    for other, name in (("tiny-flux-dev", "flux"), ("tiny-sd3", "sd3"), ("tiny-z-image", "z-image"),
                        ("tiny-sd15", "sd15")):
        other_pipe = load_pipeline(other)
        denoiser = getattr(other_pipe, detect(other_pipe).denoiser)
        assert detect(denoiser).name == name and not fam.matches(denoiser.config)  # Qwen-Image's rule claims none
    # FLUX's config shares joint_attention_dim and axes_dims_rope with Qwen-Image's, and no other family takes
    # Qwen-Image's config
    config = dict(pipe.transformer.config)
    assert not any(get_family(n).matches(config) for n in ("sd15", "sdxl", "sdxl-refiner", "sd3", "flux", "z-image"))
    without = {k: v for k, v in config.items() if k != "zero_cond_t"}
    with pytest.raises(UnsupportedModelError):
        detect(SimpleNamespace(transformer=SimpleNamespace(config=without)))
    # the pipeline's defaults: 50 steps, true CFG 4.0, 1024 px (default_sample_size 128 x the VAE's factor: 256 here)
    assert (default_steps(pipe), default_guidance(pipe), default_size(pipe)) == (50, 4.0, 256)
    assert "Qwen/Qwen-Image" in KNOWN_MODELS and model_defaults("Qwen/Qwen-Image") == model_defaults("tiny-sd15")


def test_prompt_template_is_the_pipelines(pipe):
    from aifeedback.families.qwen_image import PROMPT_TEMPLATE, TEMPLATE_TOKENS

    assert (PROMPT_TEMPLATE, TEMPLATE_TOKENS) == (pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx)


@pytest.mark.numerics
def test_prompt_encoding_matches_qwen_image_pipeline(pipe):
    fam = _qwen()
    captions = [*PROMPTS, "", "a much longer prompt about a small green frog sitting on a leaf in the rain"]
    ours = fam.encode_prompts(fam.text_encoders(pipe), captions)
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(list(captions))
    assert ours["embeds"].shape == (4, 512, 32) and ours["mask"].dtype == torch.bool
    longest = embeds.shape[1]
    assert mask is not None and torch.equal(ours["mask"][:, :longest], mask.bool())
    assert not ours["mask"][:, longest:].any() and not ours["embeds"][:, longest:].any()  # padding: zeros, masked
    # the same tokens through the same encoder; the pipeline pads the batch to its longest prompt, this to 512 + 34
    # tokens, so the attention kernels sum over other lengths: float32 rounding (seen: 5e-7), nothing more
    torch.testing.assert_close(ours["embeds"][:, :longest], embeds, rtol=0, atol=2e-6)


@pytest.mark.numerics
def test_prediction_is_what_qwen_image_pipeline_gets_from_its_transformer(pipe):
    """At the first sampling step (sigma 1, timestep 1000) QwenImagePipeline calls its transformer on the packed noise;
    unpacked, that output must be what the family predicts for the same noise (packing, img_shapes, mask, t / 1000)."""
    from diffusers import QwenImagePipeline

    fam = _qwen()
    noise = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    packed = QwenImagePipeline._pack_latents(noise, 2, 16, 16, 16)
    assert torch.equal(fam.pipeline_latents(pipe, packed, 32, 32), noise)  # the unpacking inverts the packing
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, kwargs, out: calls.append((kwargs, out[0])),
                                                  with_kwargs=True)
    try:
        pipe(list(PROMPTS), num_inference_steps=2, true_cfg_scale=1.0, height=32, width=32, latents=packed.clone(),
             output_type="latent")
    finally:
        hook.remove()
    kwargs, out = calls[0]
    assert torch.equal(kwargs["timestep"], torch.ones(2)) and torch.equal(kwargs["hidden_states"], packed)
    prompts = fam.encode_prompts(fam.text_encoders(pipe), list(PROMPTS))
    with torch.no_grad():
        v = fam.predict(pipe.transformer, noise, torch.full((2,), 1000.0), prompts, None)
    # the pipeline's text is padded to the longer prompt, here to 512 tokens (masked): float32 rounding only
    torch.testing.assert_close(v, fam.pipeline_latents(pipe, out, 32, 32), rtol=0, atol=1e-5)
    with pytest.raises(AifError, match="multiple of 16"):  # odd latent sides cannot be packed
        fam.predict(pipe.transformer, noise[..., :15, :15], torch.full((2,), 1000.0), prompts, None)


@pytest.mark.numerics
def test_render_samples_with_true_cfg_as_qwen_image_pipeline(pipe):
    """Guidance 4.0 is the pipeline's true CFG (two passes, the guided velocity rescaled to the conditional norm)
    with the negative prompt " " when none is given; the pipeline's decoding (frame axis, per-channel stats)."""
    from aifeedback.families.sampling import render

    kw = dict(num_inference_steps=2, height=32, width=32)
    ours = render(pipe, PROMPTS, [3, 4], steps=2, width=32, height=32, return_latents=True)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    ref = pipe(list(PROMPTS), negative_prompt=[" "] * 2, true_cfg_scale=4.0, generator=gens, **kw).images
    for a, b in zip(ours.images, ref, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1  # uint8 rounding
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    plain = pipe(list(PROMPTS), generator=gens, output_type="latent", **kw).images  # no negative prompt: no CFG
    assert ours.latents.shape == (2, 16, 16, 16)
    assert (ours.latents - _qwen().pipeline_latents(pipe, plain, 32, 32)).abs().max() > 1e-3  # the guidance acted
    off = render(pipe, PROMPTS[:1], [3], steps=2, width=32, height=32, guidance=1.0)
    gens = [torch.Generator().manual_seed(3)]
    assert np.abs(np.asarray(off.images[0], dtype=int)
                  - np.asarray(pipe(PROMPTS[0], generator=gens, **kw).images[0], dtype=int)).max() <= 1


@pytest.mark.numerics
def test_training_step_is_the_qwen_image_scripts(pipe):
    """train_dreambooth_lora_qwen_image.py's documented steps, re-derived here with its defaults (weighting "none"):
    pixels with a frame axis (N, 3, 1, H, W) through the VAE, latent_dist.sample(); x0 = (z - latents_mean) *
    (1 / latents_std); noise = randn_like; u = rand(n); index = int(u * 1000); timestep = scheduler.timesteps[index]
    and its sigma; x_t = (1 - sigma) x0 + sigma noise; packed 2x2 with img_shapes [(1, h/2, w/2)] * n; model_pred =
    transformer(packed, encode_prompt's embeds and mask, timestep / 1000) unpacked; target = noise - x0; weighting 1.
    For DPO, winners and losers share the noise and the timestep."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from aifeedback.zoo import tiny_pipeline_path

    fam = _qwen()
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 2 winners, 2 losers
    torch.manual_seed(5)
    x0 = fam.encode_images(pipe.vae, pixels)
    sched = fam.noise_scheduler(pipe)
    assert sched is not pipe.scheduler
    torch.manual_seed(7)
    noisy, t, target = fam.training_noise(sched, x0, groups=2)

    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
    torch.manual_seed(5)
    with torch.no_grad():
        model_input = (vae.encode(pixels.unsqueeze(2)).latent_dist.sample() - mean) * inv_std  # (4, 16, 1, 16, 16)
    torch.testing.assert_close(x0, model_input[:, :, 0], rtol=0, atol=0)
    ref = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_pipeline_path("tiny-qwen-image"), subfolder="scheduler")
    torch.manual_seed(7)
    noise = torch.randn_like(model_input[:2])
    timesteps = ref.timesteps[(torch.rand(2) * ref.config.num_train_timesteps).long()]
    sigma = ref.sigmas[[(ref.timesteps == s).nonzero().item() for s in timesteps]].view(-1, 1, 1, 1, 1)
    assert torch.equal(t, timesteps.repeat(2)) and torch.equal(sigma.flatten(), timesteps / 1000)  # unshifted
    expected = torch.cat([(1 - sigma) * model_input[:2] + sigma * noise, (1 - sigma) * model_input[2:] + sigma * noise])
    torch.testing.assert_close(noisy, expected[:, :, 0], rtol=0, atol=0)
    assert torch.equal(target, torch.cat([noise - model_input[:2], noise - model_input[2:]])[:, :, 0])
    assert torch.equal(fam.loss_weights(sched, t), torch.ones(4))

    captions = [*PROMPTS, *PROMPTS]
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(list(captions), max_sequence_length=512)
        ours = fam.predict(pipe.transformer, noisy, t, fam.encode_prompts(fam.text_encoders(pipe), captions), None)
        h, w = expected.shape[-2:]
        packed = QwenImagePipeline._pack_latents(expected.permute(0, 2, 1, 3, 4), 4, 16, h, w)
        pred = pipe.transformer(hidden_states=packed, encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                                timestep=timesteps.repeat(2) / 1000, img_shapes=[(1, h // 2, w // 2)] * 4,
                                return_dict=False)[0]
        f = pipe.vae_scale_factor
        pred = QwenImagePipeline._unpack_latents(pred, h * f, w * f, f)
    assert pred.shape == (4, 16, 1, h, w)
    # encode_prompt pads to the longer prompt, the family to 512 tokens (masked): float32 rounding only
    torch.testing.assert_close(ours, pred[:, :, 0], rtol=0, atol=1e-5)


def test_lora_targets_are_the_scripts(pipe):
    from peft import LoraConfig

    fam = _qwen()
    assert fam.lora_targets == ("to_k", "to_q", "to_v", "to_out.0")  # the script's default target_modules
    model = type(pipe.transformer).from_config(pipe.transformer.config)
    model.add_adapter(LoraConfig(r=2, target_modules=list(fam.lora_targets)))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
    blocks = len(pipe.transformer.transformer_blocks)
    # the image stream's attention projections in every dual-stream block (the text stream's add_*_proj are not
    # targets, as in the script)
    assert adapted == {f"transformer_blocks.{i}.attn.{m}" for i in range(blocks) for m in fam.lora_targets}


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    from tests.pairs_fixtures import pickapic_rows, write_pickapic

    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(4))


@pytest.mark.numerics
def test_lora_dpo_first_loss_is_ln2_and_stock_qwen_image_pipeline_loads_the_file(human, tmp_path, pipe):
    from diffusers import QwenImagePipeline

    from aifeedback.zoo import tiny_pipeline_path
    from tests.family_checks import lora_dpo_two_steps, stock_lora_changes_images

    folder, keys = lora_dpo_two_steps(human, tmp_path / "run", "tiny-qwen-image")
    # every block's image-stream attention
    assert all(k.startswith("transformer.transformer_blocks.") and ".attn." in k for k in keys)
    stock_lora_changes_images(QwenImagePipeline.from_pretrained(tiny_pipeline_path("tiny-qwen-image")), folder, keys,
                              PROMPTS[0], negative_prompt=" ")


@pytest.mark.slow
def test_every_stage_on_tiny_qwen_image(tmp_path):
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

    from aifeedback.zoo import tiny_pipeline_path
    from tests.golden import aif
    from tests.pairs_fixtures import read_metrics

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([*PROMPTS, "a green tree by a lake"]) + "\n")
    gen, pairs, size = tmp_path / "gen", tmp_path / "pairs", ["--resolution", "32"]
    common = ["--steps", "2", "--batch-size", "2", *size]
    aif("generate", "--model", "tiny-qwen-image", "--prompts", str(prompts), "--images-per-prompt", "3", *common,
        "--save-latents", "--out", str(gen))
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness", "--workers", "0", "--no-progress")
    train = ["train", "--model", "tiny-qwen-image", "--data", "ai", "--dataset", str(pairs), "--max-steps", "2", *size,
             "--batch-size", "2", "--no-scale-lr", "--checkpoint-every", "2", "--validation-every", "2",
             "--validation-steps", "2", "--num-workers", "0", "--trackers", "none"]
    aif(*train, "--lora-rank", "4", "--lr", "1e-2", "--out", str(tmp_path / "lora"))
    aif(*train, "--lr", "1e-3", "--out", str(tmp_path / "full"))
    for run_dir in ("lora", "full"):
        assert abs(read_metrics(tmp_path / run_dir)[0]["loss"] - math.log(2)) < 1e-6
        assert list((tmp_path / run_dir / "validation").glob("step-*.png"))  # true-CFG validation images
    aif("export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-x"))
    aif("export", str(tmp_path / "full"), "--out", str(tmp_path / "full-x"))

    # Stock diffusers: the exported LoRA and transformer load with Qwen-Image's own classes and change the images.
    base = QwenImagePipeline.from_pretrained(tiny_pipeline_path("tiny-qwen-image"))
    kw = dict(num_inference_steps=2, height=32, width=32, negative_prompt=" ", output_type="np")
    before = base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    base.load_lora_weights(str(tmp_path / "lora-x"))
    assert not (base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()
    transformer = QwenImageTransformer2DModel.from_pretrained(tmp_path / "full-x", subfolder="transformer")
    full = QwenImagePipeline.from_pretrained(tiny_pipeline_path("tiny-qwen-image"), transformer=transformer)
    assert not (full(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()

    aif("sample", "--model", "tiny-qwen-image", "--tuned", str(tmp_path / "lora-x"), "--prompts", str(prompts),
        *size, "--limit", "2", "--steps", "2", "--no-grid", "--out", str(tmp_path / "sample"))
    assert len(list((tmp_path / "sample").rglob("*.png"))) == 2
    aif("eval", "--base", "tiny-qwen-image", "--tuned", str(tmp_path / "full"), "--prompts", str(prompts), *size,
        "--seeds-per-prompt", "2", "--steps", "2", "--scorers", "redness", "--bootstrap", "100",
        "--out", str(tmp_path / "eval"))
    assert (tmp_path / "eval" / "report.json").exists()
