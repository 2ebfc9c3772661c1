"""The flux2 family on tiny-flux2 (FLUX.2 [dev] layout) and tiny-flux2-klein (FLUX.2 [klein] base layout): the zoo
models and the real sizes, conditioning and the denoiser call as diffusers' Flux2Pipeline / Flux2KleinPipeline compute
them, the training step as diffusers' train_dreambooth_lora_flux2.py / _flux2_klein.py take it, and the stages: the
first LoRA DPO loss ln 2, a LoRA file the stock pipelines load (slow: every stage)."""

import hashlib

import pytest
import torch

PROMPTS = ("a red cube on a table", "a blue bird in the sky")
TINY = ("tiny-flux2", "tiny-flux2-klein")


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", TINY)
def test_tiny_flux2_is_deterministic_with_the_real_classes(name, tmp_path, aif_cache):
    from diffusers import (
        AutoencoderKLFlux2,
        DiffusionPipeline,
        Flux2KleinPipeline,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )
    from transformers import PixtralProcessor, Qwen2Tokenizer, Qwen3ForCausalLM
    from transformers.models.mistral3 import Mistral3ForConditionalGeneration

    from aifeedback.zoo import ZOO

    hashes = []
    for i in range(2):
        ZOO[name].build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]
    assert isinstance(pipe.transformer, Flux2Transformer2DModel) and isinstance(pipe.vae, AutoencoderKLFlux2)
    assert not torch.equal(pipe.vae.bn.running_var, torch.ones_like(pipe.vae.bn.running_var))  # seeded statistics
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels  # 2x2-patchified latents
    assert pipe.transformer.config.joint_attention_dim == 3 * pipe.text_encoder.config.get_text_config().hidden_size
    if name == "tiny-flux2":
        assert type(pipe) is Flux2Pipeline and pipe.transformer.config.guidance_embeds
        assert isinstance(pipe.text_encoder, Mistral3ForConditionalGeneration)
        assert isinstance(pipe.tokenizer, PixtralProcessor)
        chat = pipe.tokenizer.apply_chat_template(
            [[{"role": "system", "content": [{"type": "text", "text": "S"}]},
              {"role": "user", "content": [{"type": "text", "text": "a cat"}]}]], tokenize=False)
        assert chat == ["<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]a cat[/INST]"]  # Mistral Small 3's layout
    else:
        assert type(pipe) is Flux2KleinPipeline and not pipe.transformer.config.guidance_embeds
        assert isinstance(pipe.text_encoder, Qwen3ForCausalLM) and isinstance(pipe.tokenizer, Qwen2Tokenizer)
        assert pipe.config.is_distilled is False  # the base model: classifier-free guidance


def test_real_size_flux2_transformers_hold_the_released_parameter_counts():
    """The transformer configs of diffusers' scripts/convert_flux2_to_diffusers.py build, on the meta device, the
    sizes Black Forest Labs announces: FLUX.2 [dev] "32B" (32.22 B), [klein] "4B" (3.88 B) and "9B" (9.08 B; the
    klein names count the transformer only, their Qwen3 text encoders are counted by Qwen). The exact totals are pinned
    as computed here: no safetensors total of the hub repos could be read to compare them with."""
    from diffusers import Flux2Transformer2DModel

    from aifeedback.zoo.tiny_flux2 import REAL_TRANSFORMERS

    counts = {}
    for variant, config in REAL_TRANSFORMERS.items():
        with torch.device("meta"):
            counts[variant] = sum(p.numel() for p in Flux2Transformer2DModel(**config).parameters())
    assert counts == {"dev": 32_223_281_152, "klein-4b": 3_875_544_576, "klein-9b": 9_078_581_248}
    assert [round(c / 1e9) for c in counts.values()] == [32, 4, 9]


@pytest.fixture(scope="module")
def pipes(aif_cache):
    from aifeedback.families.loading import load_pipeline

    return {name: load_pipeline(name) for name in TINY}


def _flux2():
    from aifeedback.families import get_family

    return get_family("flux2")


def test_detection_tells_flux2_from_the_other_families(pipes, aif_cache):
    """FLUX.2's transformer config has FLUX.1's num_single_layers and guidance_embeds: FLUX.1's rule claimed it (seen
    before the fix: tiny-flux2 detected as "flux"); FLUX.1's rule now also asks for its pooled projection."""
    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.sampling import default_guidance, default_size, default_steps

    fam = _flux2()
    for pipe in pipes.values():
        assert detect(pipe) is fam and detect(pipe.transformer) is fam and fam.denoiser == "transformer"
        # the pipelines' defaults: 50 steps, guidance 4.0, 1024 px (128 latent px at the real 8x VAE; 256 px here)
        assert (default_steps(pipe), default_guidance(pipe), default_size(pipe)) == (50, 4.0, 256)
    for other, name in (("tiny-flux-dev", "flux"), ("tiny-flux", "flux"), ("tiny-sd3", "sd3"),
                        ("tiny-z-image", "z-image")):
        pipe = load_pipeline(other)
        assert detect(pipe).name == name and not fam.matches(pipe.transformer.config)


def test_flux2_klein_distilled_models_sample_with_their_defaults():
    from aifeedback.families.resolve import KNOWN_MODELS, model_defaults

    for hub_id in ("black-forest-labs/FLUX.2-dev", "black-forest-labs/FLUX.2-klein-4B",
                   "black-forest-labs/FLUX.2-klein-base-4B"):
        assert hub_id in KNOWN_MODELS
    distilled = model_defaults("black-forest-labs/FLUX.2-klein-4B")
    assert (distilled.steps, distilled.guidance) == (4, 1.0)
    assert model_defaults("black-forest-labs/FLUX.2-klein-base-9B").steps is None  # the pipeline's 50 steps


@pytest.mark.numerics
@pytest.mark.parametrize("name", TINY)
def test_prompt_encoding_matches_flux2_pipelines(pipes, name):
    pipe, fam = pipes[name], _flux2()
    ours = fam.encode_prompts(fam.text_encoders(pipe), [*PROMPTS, ""])
    with torch.no_grad():
        embeds, text_ids = pipe.encode_prompt([*PROMPTS, ""])
    assert ours["embeds"].shape == (3, 512, 48) and text_ids.shape == (3, 512, 4)  # 3 layers x 16 stacked
    torch.testing.assert_close(ours["embeds"], embeds, rtol=0, atol=0)
    assert not torch.equal(ours["embeds"][0], ours["embeds"][1])


@pytest.mark.numerics
@pytest.mark.parametrize("name", TINY)
def test_prediction_is_the_velocity_flux2_pipelines_step_with(pipes, name):
    """One Euler step of the pipeline from sigma 1 to 0 moves the latents by -v: v must be what the family predicts
    for the same noise at timestep 1000 ([dev] with the training guidance 3.5 embedded, [klein] without guidance).
    Also checks `pipeline_latents`: [dev] returns packed tokens, [klein] the VAE's denormalised latents."""
    from aifeedback.families.flux2 import TRAIN_GUIDANCE

    pipe, fam = pipes[name], _flux2()
    noise = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    out = pipe(prompt=list(PROMPTS), num_inference_steps=1, guidance_scale=TRAIN_GUIDANCE if name == "tiny-flux2"
               else 1.0, height=32, width=32, latents=noise.clone(), output_type="latent").images
    out = fam.pipeline_latents(pipe, out, 32, 32)
    prompts = fam.encode_prompts(fam.text_encoders(pipe), list(PROMPTS))
    with torch.no_grad():
        v = fam.predict(pipe.transformer, noise, torch.full((2,), 1000.0), prompts, None)
    torch.testing.assert_close(v, noise - out, rtol=1e-5, atol=1e-5)


@pytest.mark.numerics
@pytest.mark.parametrize("name", TINY)
def test_render_decodes_what_flux2_pipelines_decode(pipes, name):
    import numpy as np

    from aifeedback.families.sampling import render

    pipe = pipes[name]
    ours = render(pipe, PROMPTS, [3, 4], steps=2, width=32, height=32, return_latents=True)  # guidance 4.0
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    ref = pipe(prompt=list(PROMPTS), num_inference_steps=2, height=32, width=32, generator=gens).images
    for a, b in zip(ours.images, ref, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1  # uint8 rounding
    assert ours.latents.shape == (2, 32, 8, 8)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():  # decode_images undoes encode_images' normalisation: the VAE's own latents decoded
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mode(), return_dict=False)[0]
        back = _flux2().decode_images(pipe.vae, _flux2().encode_images(pipe.vae, pixels))
    torch.testing.assert_close(back, decoded, rtol=1e-5, atol=1e-5)


def test_negative_prompts_go_to_klein_as_embeddings_and_are_refused_by_dev(pipes):
    from aifeedback.errors import AifError
    from aifeedback.families.sampling import render

    klein = pipes["tiny-flux2-klein"]
    plain = render(klein, PROMPTS[:1], [3], steps=2, width=32, height=32, return_latents=True).latents
    negative = render(klein, PROMPTS[:1], [3], steps=2, width=32, height=32, negative_prompt="blurry",
                      return_latents=True).latents
    with torch.no_grad():
        neg_embeds, _ = klein.encode_prompt(["blurry"])
    ref = klein(prompt=list(PROMPTS[:1]), negative_prompt_embeds=neg_embeds, num_inference_steps=2, height=32,
                width=32, generator=[torch.Generator().manual_seed(3)], output_type="latent").images
    torch.testing.assert_close(negative, _flux2().pipeline_latents(klein, ref, 32, 32), rtol=1e-5, atol=1e-5)
    assert not torch.equal(plain, negative)
    with pytest.raises(AifError, match="takes no negative prompt"):
        render(pipes["tiny-flux2"], PROMPTS[:1], [3], steps=2, width=32, height=32, negative_prompt="blurry")


@pytest.mark.numerics
@pytest.mark.parametrize("name", TINY)
def test_training_step_is_the_flux2_scripts(pipes, name):
    """train_dreambooth_lora_flux2.py's (and _flux2_klein.py's) documented steps, re-derived here with plain tensor
    operations and the scripts' defaults (weighting "none"): x0 = (patchify2x2(latent_dist.mode()) - bn.running_mean)
    / sqrt(bn.running_var + eps); noise = randn_like(x0); u = rand(n); index = int(u * 1000); timestep =
    scheduler.timesteps[index] and its sigma; x_t = (1 - sigma) x0 + sigma noise; tokens = x_t flattened to
    (B, h*w, C) with ids (0, row, column, 0); text ids (0, 0, 0, token); guidance 3.5 ([dev]) or none ([klein]);
    model_pred = transformer(tokens, t / 1000, ...) scattered back to (B, C, h, w); target = noise - x0; weighting 1.
    For DPO, winners and losers share the noise and the timestep."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from aifeedback.zoo import tiny_pipeline_path

    pipe, fam = pipes[name], _flux2()
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 2 winners, 2 losers
    x0 = fam.encode_images(pipe.vae, pixels)
    with torch.no_grad():
        z = pipe.vae.encode(pixels).latent_dist.mode()  # (4, 8, 16, 16)
    z = z.view(4, 8, 8, 2, 8, 2).permute(0, 1, 3, 5, 2, 4).reshape(4, 32, 8, 8)  # channel = c * 4 + dy * 2 + dx
    bn = pipe.vae.bn
    expected = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4)
    torch.testing.assert_close(x0, expected, rtol=0, atol=0)
    sched = fam.noise_scheduler(pipe)
    assert sched.config.use_dynamic_shifting and sched is not pipe.scheduler
    torch.manual_seed(7)
    noisy, t, target = fam.training_noise(sched, x0, groups=2)
    ref = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_pipeline_path(name), subfolder="scheduler")
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
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    img_ids = torch.stack([torch.zeros(64), rows.flatten(), cols.flatten(), torch.zeros(64)], dim=1).long()
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(list(captions))
        txt_ids = torch.stack([torch.zeros(512), torch.zeros(512), torch.zeros(512), torch.arange(512)], 1).long()
        guidance = torch.full((4,), 3.5) if name == "tiny-flux2" else None
        tokens = noisy.reshape(4, 32, 64).transpose(1, 2)
        pred = pipe.transformer(hidden_states=tokens, timestep=t / 1000, guidance=guidance,
                                encoder_hidden_states=embeds, txt_ids=txt_ids.expand(4, -1, -1),
                                img_ids=img_ids.expand(4, -1, -1), return_dict=False)[0]
        ours = fam.predict(pipe.transformer, noisy, t, fam.encode_prompts(fam.text_encoders(pipe), captions), None)
    torch.testing.assert_close(ours, pred.transpose(1, 2).reshape(4, 32, 8, 8), rtol=0, atol=0)
    if name == "tiny-flux2":  # the guidance embedding is in the call: without it the prediction differs
        with torch.no_grad():
            unguided = pipe.transformer(hidden_states=tokens, timestep=t / 1000, guidance=None,
                                        encoder_hidden_states=embeds, txt_ids=txt_ids.expand(4, -1, -1),
                                        img_ids=img_ids.expand(4, -1, -1), return_dict=False)[0]
        assert not torch.equal(unguided, pred)


def test_odd_patch_sides_are_refused(pipes):
    from aifeedback.errors import AifError

    with pytest.raises(AifError, match="multiple of 4"):  # the tiny VAE's 2 x the patch's 2 (the real one's 16)
        _flux2().encode_images(pipes["tiny-flux2"].vae, torch.zeros(1, 3, 30, 30))


@pytest.mark.parametrize("name,singles", [("tiny-flux2", 48), ("tiny-flux2-klein", 24)])
def test_lora_targets_are_the_scripts(pipes, name, singles):
    """The scripts' default target_modules ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj" and
    single_transformer_blocks.{i}.attn.to_out for i < 48 ([dev]) or 24 ([klein])) adapt the same modules as the
    family's list, built from the model's own number of single blocks."""
    from peft import LoraConfig

    pipe, fam = pipes[name], _flux2()
    script = ["to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj",
              *[f"single_transformer_blocks.{i}.attn.to_out" for i in range(singles)]]
    adapted = []
    for targets in (script, fam.lora_target_modules(pipe.transformer)):
        model = type(pipe.transformer).from_config(pipe.transformer.config)
        model.add_adapter(LoraConfig(r=2, target_modules=targets))
        adapted.append({n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n})
    assert adapted[0] == adapted[1]
    assert any(n.startswith("single_transformer_blocks.") and n.endswith("attn.to_out") for n in adapted[1])
    assert any(n.startswith("transformer_blocks.") and n.endswith("attn.to_q") for n in adapted[1])
    assert not any(n.endswith("add_k_proj") for n in adapted[1])  # the text stream's projections are not named


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    from tests.pairs_fixtures import pickapic_rows, write_pickapic

    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(4))


@pytest.mark.numerics
@pytest.mark.parametrize("name", TINY)
def test_lora_dpo_first_loss_is_ln2_and_stock_flux2_pipelines_load_the_file(human, tmp_path, name, aif_cache):
    from diffusers import DiffusionPipeline

    from aifeedback.zoo import tiny_pipeline_path
    from tests.family_checks import lora_dpo_two_steps, stock_lora_changes_images

    folder, keys = lora_dpo_two_steps(human, tmp_path / "run", name)
    assert {k.split(".")[1] for k in keys} == {"transformer_blocks", "single_transformer_blocks"}
    stock_lora_changes_images(DiffusionPipeline.from_pretrained(tiny_pipeline_path(name)), folder, keys, PROMPTS[0])


@pytest.mark.parametrize("name", TINY)
def test_validation_grid_during_training(human, tmp_path, name, aif_cache):
    """Training's validation grid renders through FLUX.2's pipelines (seen failing before: both take `image` as their
    first positional argument, so the prompt passed positionally left them without one: ValueError)."""
    import numpy as np
    from PIL import Image

    from aifeedback.stages.train import run
    from tests.pairs_fixtures import tiny_train

    out = run(tiny_train(human, tmp_path / "run", model=name, lora_rank=2, max_steps=1, checkpoint_every=1,
                         validation_every=1, validation_steps=2, validation_prompts=[PROMPTS[0]],
                         validation_seeds=[0, 1]))
    grid = np.asarray(Image.open(out / "validation" / "step-000001.png"))
    assert grid.shape == (16, 32, 3)  # one prompt, two seeds, at the training resolution
    assert not (grid[:, :16] == grid[:, 16:]).all()  # the seeds' cells differ


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_every_stage_on_tiny_flux2(name, tmp_path):
    import math

    from diffusers import DiffusionPipeline, Flux2Transformer2DModel

    from aifeedback.zoo import tiny_pipeline_path
    from tests.golden import aif
    from tests.pairs_fixtures import read_metrics

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([*PROMPTS, "a green tree by a lake"]) + "\n")
    gen, pairs, size = tmp_path / "gen", tmp_path / "pairs", ["--resolution", "32"]
    common = ["--steps", "2", "--batch-size", "2", *size]
    aif("generate", "--model", name, "--prompts", str(prompts), "--images-per-prompt", "3", *common,
        "--save-latents", "--out", str(gen))
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness", "--workers", "0", "--no-progress")
    train = ["train", "--model", name, "--data", "ai", "--dataset", str(pairs), "--max-steps", "2", *size,
             "--batch-size", "2", "--no-scale-lr", "--checkpoint-every", "2", "--validation-every", "0",
             "--num-workers", "0", "--trackers", "none"]
    aif(*train, "--lora-rank", "4", "--lr", "1e-2", "--out", str(tmp_path / "lora"))
    aif(*train, "--lr", "1e-3", "--out", str(tmp_path / "full"))
    for run_dir in ("lora", "full"):
        assert abs(read_metrics(tmp_path / run_dir)[0]["loss"] - math.log(2)) < 1e-6
    aif("export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-x"))
    aif("export", str(tmp_path / "full"), "--out", str(tmp_path / "full-x"))

    # Stock diffusers: the exported LoRA and transformer load with FLUX.2's own classes and change the images.
    base = DiffusionPipeline.from_pretrained(tiny_pipeline_path(name))
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    before = base(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    base.load_lora_weights(str(tmp_path / "lora-x"))
    assert not (base(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()
    transformer = Flux2Transformer2DModel.from_pretrained(tmp_path / "full-x", subfolder="transformer")
    full = DiffusionPipeline.from_pretrained(tiny_pipeline_path(name), transformer=transformer)
    assert not (full(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()

    aif("sample", "--model", name, "--tuned", str(tmp_path / "lora-x"), "--prompts", str(prompts), *size,
        "--limit", "2", "--steps", "2", "--no-grid", "--out", str(tmp_path / "sample"))
    assert len(list((tmp_path / "sample").rglob("*.png"))) == 2
    aif("eval", "--base", name, "--tuned", str(tmp_path / "full"), "--prompts", str(prompts), *size,
        "--seeds-per-prompt", "2", "--steps", "2", "--scorers", "redness", "--bootstrap", "100",
        "--out", str(tmp_path / "eval"))
    assert (tmp_path / "eval" / "report.json").exists()


def test_tuned_flux2_transformer_must_fit_its_base(tmp_path, aif_cache):
    """A transformer with another number of single blocks is another model: refused before it loads (seen failing
    before num_single_layers was compared: a 2-single-block transformer loaded into tiny-flux2)."""
    from diffusers import AutoModel

    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.resolve import TunedLoadError
    from aifeedback.zoo import tiny_pipeline_path

    config = dict(AutoModel.load_config(tiny_pipeline_path("tiny-flux2"), subfolder="transformer"), num_single_layers=2)
    deeper = tmp_path / "transformer"
    AutoModel.from_config(config).save_pretrained(deeper)
    with pytest.raises(TunedLoadError, match="transformer num_single_layers is 2, the base has 1"):
        load_pipeline("tiny-flux2", tuned=str(deeper))
