"""The flow-matching family base (families/flow.py) and the SD3 family on tiny-sd3: the objective against a hand
computation, conditioning and latents as diffusers' StableDiffusion3Pipeline computes them, and (slow) every stage:
generate -> score -> train (LoRA, full) -> export -> stock diffusers -> sample / eval, resume, two processes."""

import math

import pytest
import torch

from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic

PROMPTS = ["a red cube on a table", "a blue bird in the sky"]


@pytest.fixture(scope="module")
def pipe(aif_cache):
    from aifeedback.families.loading import load_pipeline

    return load_pipeline("tiny-sd3")


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(4))


def _sd3():
    from aifeedback.families import get_family

    return get_family("sd3")


def _hand_sigma(index: torch.Tensor, steps: int = 1000, shift: float = 3.0) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's training grid written out: position i holds the unshifted sigma
    (steps - i) / steps, shifted as SD3 does, shift * s / (1 + (shift - 1) * s); its timestep is sigma * steps."""
    s = (steps - index.double()) / steps
    return shift * s / (1 + (shift - 1) * s)


def test_flow_objective_against_a_hand_computation():
    from diffusers import FlowMatchEulerDiscreteScheduler

    fam, sched = _sd3(), FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's scheduler config
    x0 = torch.randn(6, 16, 4, 4, generator=torch.Generator().manual_seed(1))  # 3 winners, then their 3 losers
    torch.manual_seed(7)
    noisy, t, target = fam.training_noise(sched, x0, groups=2)
    # By hand, from the same RNG: the noise for 3 items, then diffusers' logit-normal density (mean 0, std 1):
    # u = sigmoid(N(0, 1)), grid index floor(u * 1000).
    torch.manual_seed(7)
    noise = torch.randn(3, 16, 4, 4)
    index = (torch.sigmoid(torch.randn(3)) * 1000).long()
    sigma = _hand_sigma(index).float()
    # float32 grid vs float64 formula: the scheduler computes its grid in float32 (~1e-7 relative)
    torch.testing.assert_close(t, (sigma * 1000).repeat(2), rtol=1e-5, atol=1e-4)
    s = sigma.repeat(2).view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - s) * x0 + s * noise.repeat(2, 1, 1, 1), rtol=1e-5, atol=1e-6)
    assert torch.equal(target, noise.repeat(2, 1, 1, 1) - x0)  # the velocity; winner and loser share the noise
    assert torch.equal(t[:3], t[3:])  # ... and the sigma
    assert torch.equal(fam.loss_weights(sched, t), torch.ones(6))  # logit_normal: the density does the weighting


def test_loss_weighting_schemes_and_weighted_errors():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from aifeedback.families.flow import flow_sigmas
    from aifeedback.families.sd3 import SD3
    from aifeedback.losses.base import denoising_mse

    class SigmaSqrt(SD3):
        weighting_scheme = "sigma_sqrt"

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    t = sched.timesteps[torch.tensor([0, 500, 999])]
    sigma = _hand_sigma(torch.tensor([0, 500, 999])).float()
    torch.testing.assert_close(flow_sigmas(sched, t), sigma, rtol=1e-6, atol=0)
    torch.testing.assert_close(SigmaSqrt("x", "y").loss_weights(sched, t), sigma ** -2, rtol=1e-5, atol=0)
    pred, target = torch.zeros(3, 2, 2), torch.arange(12.0).view(3, 2, 2)
    plain = target.pow(2).mean(dim=(1, 2))
    assert torch.equal(denoising_mse(pred, target), plain)
    assert torch.equal(denoising_mse(pred, target, torch.tensor([1.0, 2.0, 0.5])), plain * torch.tensor([1, 2, 0.5]))
    with pytest.raises(ValueError, match="not on the scheduler's training grid"):
        flow_sigmas(sched, torch.tensor([0.5]))


def test_loss_weights_act_inside_the_dpo_difference_as_an_effective_beta():
    """What families/flow.py and losses/base.py document: weighted errors (weight shared by winner and loser) give
    the DPO loss of the unweighted errors with beta * w(sigma) per pair, by hand; the shipped schemes weigh 1."""
    import torch.nn.functional as F
    from diffusers import FlowMatchEulerDiscreteScheduler

    from aifeedback.families.flux import Flux
    from aifeedback.families.sd3 import SD3
    from aifeedback.losses.base import denoising_mse
    from aifeedback.losses.dpo import dpo

    class Cosmap(SD3):
        weighting_scheme = "cosmap"

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    t = sched.timesteps[torch.tensor([10, 500, 990])]
    w = Cosmap("x", "y").loss_weights(sched, t)
    assert not torch.allclose(w, w[:1].expand(3))  # cosmap: the weight varies with sigma
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 4, generator=g)
    preds = [torch.randn(6, 4, generator=g) for _ in range(2)]  # policy, reference; rows 0-2 winners, 3-5 losers
    (mw, ml), (rw, rl) = (denoising_mse(p, target, w.repeat(2)).chunk(2) for p in preds)
    (ew, el), (fw, fl) = (denoising_mse(p, target).chunk(2) for p in preds)
    beta = 5000.0
    by_hand = -F.logsigmoid(-beta * w / 2 * ((ew - fw) - (el - fl))).mean()
    torch.testing.assert_close(dpo(mw, ml, rw, rl, beta).loss, by_hand, rtol=1e-5, atol=1e-6)
    for family in (SD3, Flux):  # the shipped schemes (logit_normal, none): w = 1, Flow-DPO's constant beta
        assert torch.equal(family("x", "y").loss_weights(sched, t), torch.ones(3))


def test_offline_t5_tokenizer_is_deterministic_and_t5_shaped(tmp_path):
    from transformers import T5TokenizerFast

    from aifeedback.zoo.tokenizer import t5_tokenizer_files

    files = [sorted((p.name, p.read_bytes()) for p in t5_tokenizer_files(tmp_path / str(i)).iterdir()) for i in (0, 1)]
    assert files[0] == files[1]
    tok = T5TokenizerFast.from_pretrained(tmp_path / "0")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)  # T5's layout
    text = "An astronaut riding a horse on Mars, 4k!"
    ids = tok(text, padding="max_length", max_length=64).input_ids
    assert ids[ids.index(1) + 1:] == [0] * (63 - ids.index(1)) and 2 not in ids  # </s>, padding, no <unk>
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_sd3_detection_and_facts(pipe, tiny_sd15):
    from diffusers import DiffusionPipeline

    from aifeedback.families import detect, family
    from aifeedback.families.sampling import default_guidance, default_size

    assert family(pipe) == "sd3" and family(pipe.transformer) == "sd3"
    assert family(DiffusionPipeline.from_pretrained(tiny_sd15)) == "sd15"  # SD3's rule does not claim a UNet
    fam = detect(pipe)
    assert fam.denoiser == "transformer" and fam.lora_pipeline is type(pipe)
    assert default_size(pipe) == 32 and default_guidance(pipe) == 7.0  # 16 latent px x 2; the pipeline's 7.0


def test_prompts_encode_as_the_pipeline_encodes_them(pipe):
    fam = _sd3()
    ours = fam.encode_prompts(fam.text_encoders(pipe), PROMPTS)
    with torch.no_grad():  # as the pipeline's __call__ runs it (with autograd on, T5 takes another kernel path)
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False)
    assert ours["embeds"].shape == (2, 77 + 256, 32) and ours["pooled"].shape == (2, 32)
    torch.testing.assert_close(ours["embeds"], embeds, rtol=0, atol=0)  # the same calls on the same batch
    torch.testing.assert_close(ours["pooled"], pooled, rtol=0, atol=0)


def test_latents_are_shifted_and_scaled_both_ways(pipe):
    from aifeedback.families.sampling import decode_latents

    fam, vae = _sd3(), pipe.vae
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(3)
    z = fam.encode_images(vae, pixels)
    torch.manual_seed(3)
    raw = vae.encode(pixels).latent_dist.sample()
    assert z.shape == (1, 16, 16, 16)
    torch.testing.assert_close(z, (raw - 0.0609) * 1.5035, rtol=0, atol=0)  # diffusers' SD3 training latents
    # Decoding a rendered latent gives the pipeline's own image (it decodes latents / scale + shift).
    kw = dict(num_inference_steps=2, height=32, width=32)
    latent = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images
    image = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="np", **kw).images[0]
    ours = torch.tensor(list(decode_latents(pipe, latent)[0].getdata()), dtype=torch.float32).view(32, 32, 3)
    assert (ours - torch.from_numpy(image * 255).round()).abs().max() <= 1  # PIL rounding vs numpy float


def test_tuned_transformer_must_fit_its_base(tmp_path):
    from diffusers import AutoModel

    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.resolve import TunedLoadError
    from aifeedback.zoo import tiny_pipeline_path

    with pytest.raises(TunedLoadError, match="holds a transformer, but base model .* has none"):
        load_pipeline("tiny-sd15", tuned="tiny-sd3")  # would otherwise be dropped by diffusers without a word
    config = dict(AutoModel.load_config(tiny_pipeline_path("tiny-sd3"), subfolder="transformer"), num_layers=1)
    shallower = tmp_path / "transformer"
    AutoModel.from_config(config).save_pretrained(shallower)
    with pytest.raises(TunedLoadError, match="transformer num_layers is 1, the base has 2"):
        load_pipeline("tiny-sd3", tuned=str(shallower))


def test_flow_models_refuse_ddpm_samplers(pipe):
    from aifeedback.families.loading import set_scheduler

    with pytest.raises(ValueError, match="flow-matching model"):
        set_scheduler(pipe, "ddim")


def test_lora_dpo_first_loss_is_ln2_and_the_file_loads_in_diffusers(human, tmp_path, pipe):
    from safetensors import safe_open

    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", model="tiny-sd3", lora_rank=2, lr=1e-2, max_steps=2))
    m = read_metrics(out)
    # LoRA B starts at zero and the reference is the same network with adapters off: at step 0 the model and
    # reference errors are the same numbers, the DPO margin is exactly 0, and the loss is ln 2 up to float32
    # rounding of log(1 + exp(0)) (~1e-7).
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6 and m[0]["implicit_acc"] == 0.5
    lora = out / "checkpoints" / "checkpoint-000002" / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") for k in keys)  # the prefix load_lora_weights expects
    assert any(".attn.add_q_proj." in k for k in keys)  # the text stream's projections are adapted too


@pytest.mark.slow
def test_every_stage_on_tiny_sd3(tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from aifeedback.zoo import tiny_pipeline_path
    from tests.golden import aif

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS + ["a green tree by a lake"]) + "\n")
    gen, pairs = tmp_path / "gen", tmp_path / "pairs"
    common = ["--steps", "2", "--batch-size", "2"]
    aif("generate", "--model", "tiny-sd3", "--prompts", str(prompts), "--images-per-prompt", "3", *common,
        "--save-latents", "--out", str(gen))
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness", "--workers", "0", "--no-progress")
    train = ["train", "--model", "tiny-sd3", "--data", "ai", "--dataset", str(pairs), "--max-steps", "2",
             "--batch-size", "2", "--no-scale-lr", "--checkpoint-every", "2", "--validation-every", "0",
             "--num-workers", "0", "--trackers", "none", "--resolution", "32"]  # the stored latents' size
    aif(*train, "--lora-rank", "4", "--lr", "1e-2", "--out", str(tmp_path / "lora"))
    aif(*train, "--lr", "1e-3", "--out", str(tmp_path / "full"))
    for run_dir in ("lora", "full"):
        assert abs(read_metrics(tmp_path / run_dir)[0]["loss"] - math.log(2)) < 1e-6
    aif("export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-x"))
    aif("export", str(tmp_path / "full"), "--out", str(tmp_path / "full-x"))

    # Stock diffusers, no aifeedback code: the exported files load with the family's own classes and change images.
    base = StableDiffusion3Pipeline.from_pretrained(tiny_pipeline_path("tiny-sd3"))
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    before = base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    base.load_lora_weights(str(tmp_path / "lora-x"))
    with_lora = base(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    assert with_lora.shape == before.shape and not (with_lora == before).all()
    transformer = SD3Transformer2DModel.from_pretrained(tmp_path / "full-x", subfolder="transformer")
    full = StableDiffusion3Pipeline.from_pretrained(tiny_pipeline_path("tiny-sd3"), transformer=transformer)
    assert not (full(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images == before).all()

    aif("sample", "--model", "tiny-sd3", "--tuned", str(tmp_path / "lora-x"), "--prompts", str(prompts),
        "--limit", "2", "--steps", "2", "--no-grid", "--out", str(tmp_path / "sample"))
    assert len(list((tmp_path / "sample").rglob("*.png"))) == 2
    aif("eval", "--base", "tiny-sd3", "--tuned", str(tmp_path / "full"), "--prompts", str(prompts),
        "--seeds-per-prompt", "2", "--steps", "2", "--scorers", "redness", "--bootstrap", "100",
        "--out", str(tmp_path / "eval"))
    assert (tmp_path / "eval" / "report.json").exists()
