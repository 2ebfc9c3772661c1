"""The FLUX family on tiny-flux (schnell-like) and tiny-flux-dev (guidance embedding): the zoo models, conditioning
and the denoiser call as diffusers' FluxPipeline computes them, and (slow) every stage: generate -> score -> train
(LoRA, full) -> export -> stock diffusers -> sample / eval, the first loss ln 2, resume."""

import hashlib
import math

import numpy as np
import pytest
import torch

from aifeedback.errors import AifError
from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic

PROMPTS = ["a red cube on a table", "a blue bird in the sky"]


def _flux():
    from aifeedback.families import get_family

    return get_family("flux")


@pytest.fixture(scope="module")
def pipes(aif_cache):
    from aifeedback.families.loading import load_pipeline

    return {name: load_pipeline(name) for name in ("tiny-flux", "tiny-flux-dev")}


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(4))


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


@pytest.mark.numerics
def test_prompt_encoding_matches_flux_pipeline(pipes):
    fam, pipe = _flux(), pipes["tiny-flux-dev"]
    ours = fam.encode_prompts(fam.text_encoders(pipe), PROMPTS)
    with torch.no_grad():  # as encode_prompts runs (with autograd on, T5's attention takes another kernel: ~2e-5)
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, prompt_2=None, max_sequence_length=512)
    # same modules, same inputs, same order of operations: equal up to float32 rounding
    torch.testing.assert_close(ours["embeds"], embeds, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours["pooled"], pooled, rtol=1e-6, atol=1e-6)
    assert not text_ids.any()  # FLUX's text position ids are zeros: predict builds them so


@pytest.mark.numerics
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
    with pytest.raises(AifError, match="multiple of 16"):  # odd latent sides cannot be packed
        fam.predict(pipe.transformer, noise[..., :15, :15], torch.full((2,), 1000.0), prompts, None)


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


def test_lora_dpo_first_loss_is_ln2_and_the_file_is_keyed_for_flux_pipeline(human, tmp_path, pipes):
    from safetensors import safe_open

    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", model="tiny-flux-dev", lora_rank=2, lr=1e-2, max_steps=2))
    m = read_metrics(out)
    # LoRA B starts at zero and the reference is the same network with adapters off: at step 0 the DPO margin is
    # exactly 0 and the loss is ln 2 up to float32 rounding of log(1 + exp(0)) (~1e-7).
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6 and m[0]["implicit_acc"] == 0.5
    assert m[1]["loss"] != m[0]["loss"]  # the adapters moved
    lora = out / "checkpoints" / "checkpoint-000002" / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") for k in keys)  # the prefix FluxPipeline.load_lora_weights wants
    assert any(".ff_context.net.2." in k for k in keys) and any("single_transformer_blocks" in k for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-flux-dev", "tiny-flux"])
def test_every_stage_on_tiny_flux(model, tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from aifeedback.zoo import tiny_pipeline_path
    from tests.golden import aif

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS + ["a green tree by a lake"]) + "\n")
    gen, pairs, size = tmp_path / "gen", tmp_path / "pairs", ["--resolution", "32"]
    common = ["--steps", "2", "--batch-size", "2", *size]
    aif("generate", "--model", model, "--prompts", str(prompts), "--images-per-prompt", "3", *common,
        "--save-latents", "--out", str(gen))
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness", "--workers", "0", "--no-progress")
    train = ["train", "--model", model, "--data", "ai", "--dataset", str(pairs), "--max-steps", "2", *size,
             "--batch-size", "2", "--no-scale-lr", "--checkpoint-every", "2", "--validation-every", "0",
             "--num-workers", "0", "--trackers", "none"]
    aif(*train, "--lora-rank", "4", "--lr", "1e-2", "--out", str(tmp_path / "lora"))
    aif(*train, "--lr", "1e-3", "--out", str(tmp_path / "full"))
    for run_dir in ("lora", "full"):
        assert abs(read_metrics(tmp_path / run_dir)[0]["loss"] - math.log(2)) < 1e-6
    aif("export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-x"))
    aif("export", str(tmp_path / "full"), "--out", str(tmp_path / "full-x"))

    # Stock diffusers, no aifeedback code: the exported files load with FLUX's own classes and change the images.
    base = FluxPipeline.from_pretrained(tiny_pipeline_path(model))
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    before = base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    base.load_lora_weights(str(tmp_path / "lora-x"))
    with_lora = base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    assert with_lora.shape == before.shape and not (with_lora == before).all()
    transformer = FluxTransformer2DModel.from_pretrained(tmp_path / "full-x", subfolder="transformer")
    full = FluxPipeline.from_pretrained(tiny_pipeline_path(model), transformer=transformer)
    assert not (full(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()

    aif("sample", "--model", model, "--tuned", str(tmp_path / "lora-x"), "--prompts", str(prompts), *size,
        "--limit", "2", "--steps", "2", "--no-grid", "--out", str(tmp_path / "sample"))
    assert len(list((tmp_path / "sample").rglob("*.png"))) == 2
    aif("eval", "--base", model, "--tuned", str(tmp_path / "full"), "--prompts", str(prompts), *size,
        "--seeds-per-prompt", "2", "--steps", "2", "--scorers", "redness", "--bootstrap", "100",
        "--out", str(tmp_path / "eval"))
    assert (tmp_path / "eval" / "report.json").exists()


def test_training_uses_the_stored_flux_latents(tmp_path, capsys, aif_cache):
    """`aif generate --save-latents` stores FLUX latents unpacked (16 channels, training's space): train uses them
    instead of encoding the images again (the transformer's 64 input channels are the packed view)."""
    from aifeedback.stages.train import run
    from tests.golden import aif

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    gen, pairs = tmp_path / "gen", tmp_path / "pairs"
    aif("generate", "--model", "tiny-flux", "--prompts", str(prompts), "--images-per-prompt", "2", "--steps", "1",
        "--resolution", "16", "--save-latents", "--out", str(gen), "--no-progress")
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness", "--workers", "0", "--no-progress")
    capsys.readouterr()
    run(tiny_train(pairs, tmp_path / "run", data="ai", model="tiny-flux", lora_rank=2, max_steps=1,
                   checkpoint_every=1))
    assert "using the stored latents [16, 8, 8] (VAE encoder skipped)" in capsys.readouterr().err


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    """One of 2 gloo processes: tiny-flux-dev's transformer sharded as fsdp_flux_8gpu.yaml wraps it (one unit per
    double / single block), its prediction and one training step against the unsharded model."""
    import json
    import os
    from datetime import timedelta
    from pathlib import Path

    import torch.distributed as dist
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from aifeedback.families.loading import load_pipeline

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    pipe, fam = load_pipeline("tiny-flux-dev"), _flux()
    prompts = fam.encode_prompts(fam.text_encoders(pipe), PROMPTS)
    noisy = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([250.0, 750.0])
    with torch.no_grad():
        plain = fam.predict(pipe.transformer, noisy, t, prompts, None)
    model = FSDP(pipe.transformer, device_id=torch.device("cpu"), use_orig_params=True,
                 auto_wrap_policy=ModuleWrapPolicy({FluxTransformerBlock, FluxSingleTransformerBlock}))
    units = sum(isinstance(m, FSDP) for m in model.modules())
    pred = fam.predict(model, noisy, t, prompts, None)  # the guidance embedding found through the wrapper
    pred.pow(2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    with torch.no_grad():
        moved = fam.predict(model, noisy, t, prompts, None)
    result = dict(units=units, diff=float((pred - plain).abs().max()), moved=float((moved - plain).abs().max()))
    (Path(out) / f"fsdp{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.numerics
@pytest.mark.slow
def test_fsdp_sharded_flux_transformer_predicts_and_trains(tmp_path, aif_cache):
    import json

    import torch.multiprocessing as mp

    from tests.launch import free_port

    mp.spawn(_fsdp_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        r = json.loads((tmp_path / f"fsdp{rank}.json").read_text())
        assert r["units"] == 1 + 1 + 1  # the root and tiny-flux-dev's one double and one single block
        assert r["diff"] < 1e-5  # the same float32 math on gathered shards: equal up to summation order
        assert r["moved"] > 1e-3  # the sharded step changed the weights on every process


def test_training_sigmas_are_uniform_and_unshifted_as_diffusers_flux_script_draws_them(pipes):
    """train_dreambooth_lora_flux.py: weighting "none" = u ~ U[0, 1), grid index floor(u * 1000) of the scheduler
    built from the model's config, whose sigmas are unshifted for dev (dynamic shifting applies only when sampling)
    and for schnell (shift 1); x_t = (1 - sigma) x0 + sigma noise, target noise - x0, unit loss weights."""
    fam = _flux()
    for pipe in pipes.values():
        sched = fam.noise_scheduler(pipe)
        x0 = torch.randn(6, 16, 4, 4, generator=torch.Generator().manual_seed(1))  # 3 winners, then their losers
        torch.manual_seed(7)
        noisy, t, target = fam.training_noise(sched, x0, groups=2)
        torch.manual_seed(7)  # by hand, from the same RNG: the noise of 3 items, then the uniform draw
        noise = torch.randn(3, 16, 4, 4)
        sigma = (1000 - (torch.rand(3) * 1000).long()).float() / 1000  # the unshifted grid: 1, 0.999, ..., 0.001
        torch.testing.assert_close(t, (sigma * 1000).repeat(2), rtol=1e-5, atol=1e-4)  # float32 grid rounding
        s = sigma.repeat(2).view(-1, 1, 1, 1)
        torch.testing.assert_close(noisy, (1 - s) * x0 + s * noise.repeat(2, 1, 1, 1), rtol=1e-5, atol=1e-6)
        assert torch.equal(target, noise.repeat(2, 1, 1, 1) - x0)
        assert torch.equal(fam.loss_weights(sched, t), torch.ones(6))


def test_bf16_lora_run_loads_the_pipeline_in_bf16(human, tmp_path, monkeypatch):
    """FLUX.1-dev loaded in float32 on the CPU takes ~67 GB of host RAM; a bf16 LoRA run casts every part to bf16
    anyway, so it loads in bf16 (~34 GB) and still starts at ln 2."""
    import aifeedback.stages.train as T

    seen, load = [], T.load_pipeline

    def recording(name, dtype, *args, **kw):
        seen.append(dtype)
        return load(name, dtype, *args, **kw)

    monkeypatch.setattr(T, "load_pipeline", recording)
    out = T.run(tiny_train(human, tmp_path / "lora", model="tiny-flux", lora_rank=2, mixed_precision="bf16",
                           max_steps=1, checkpoint_every=1))
    assert seen == ["bfloat16"] and abs(read_metrics(out)[0]["loss"] - math.log(2)) < 1e-6
    T.run(tiny_train(human, tmp_path / "full", model="tiny-flux", mixed_precision="bf16", max_steps=1,
                     checkpoint_every=1))
    assert seen == ["bfloat16", "float32"]  # a full fine-tune keeps fp32 master weights: loaded in fp32
