"""Training options from the SDXL fine-tuning tools, each against a hand computation: min-SNR loss weighting
(--snr-gamma), offset noise (--noise-offset) and an EMA of the trained weights (--ema-decay: checkpoints, exact
resume, export)."""

import math

import numpy as np
import pytest
import torch

from aifeedback.errors import AifError
from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic

UNET = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(6))


def _ddpm(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type)


# ---- min-SNR ------------------------------------------------------------------------------------------------------

@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_hang_et_al(kind):
    from aifeedback.families.base import min_snr_weights

    t = torch.tensor([0, 10, 200, 500, 999])
    gamma = 5.0
    # By hand, in float64: SD's scaled_linear betas, alpha_bar = prod(1 - beta), SNR = alpha_bar / (1 - alpha_bar)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    alpha_bar = np.cumprod(1 - betas)[t.numpy()]
    snr = alpha_bar / (1 - alpha_bar)
    expected = np.minimum(snr, gamma) / (snr if kind == "epsilon" else snr + 1)
    got = min_snr_weights(_ddpm(kind), t, gamma)
    # the scheduler holds its schedule in float32: ~1e-6 relative error in SNR, and SNR ~ 1e3 at t = 0
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)
    assert got[-1] == pytest.approx(1.0 if kind == "epsilon" else snr[-1] / (snr[-1] + 1), rel=1e-4)  # SNR < gamma


def test_min_snr_refuses_an_unknown_prediction_type():
    from aifeedback.families.base import min_snr_weights

    with pytest.raises(ValueError, match="sample"):
        min_snr_weights(_ddpm("sample"), torch.tensor([1]), 5.0)


def test_snr_gamma_weighs_policy_and_reference_errors_and_keeps_ln2(human, tmp_path, monkeypatch):
    import aifeedback.stages.train as T
    from aifeedback.families.base import min_snr_weights

    seen, real = [], T.denoising_mse

    def spy(pred, target, weights=None):
        seen.append(weights)
        return real(pred, target, weights)

    noise = []
    real_noise = T.UNetFamily.training_noise

    def noise_spy(self, scheduler, latents, groups, **kw):
        out = real_noise(self, scheduler, latents, groups, **kw)
        noise.append((scheduler, out[1]))
        return out

    monkeypatch.setattr(T, "denoising_mse", spy)
    monkeypatch.setattr(T.UNetFamily, "training_noise", noise_spy)
    m = read_metrics(T.run(tiny_train(human, tmp_path / "run", snr_gamma=5.0, max_steps=1, checkpoint_every=1)))
    scheduler, t = noise[0]
    assert len(seen) == 2  # policy, then reference: the same weights for both
    for w in seen:
        assert torch.equal(w, min_snr_weights(scheduler, t, 5.0))
    assert m[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # weighting both sides keeps policy == reference


def test_snr_gamma_and_noise_offset_are_refused_for_other_families():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from aifeedback.stages.train import TrainRecipe

    recipe = TrainRecipe.__new__(TrainRecipe)
    recipe.family = type("Flow", (), {"name": "flowfam"})()
    recipe.scheduler = FlowMatchEulerDiscreteScheduler()
    recipe.cfg = tiny_train("unused", "unused", snr_gamma=5.0)
    with pytest.raises(AifError, match="--snr-gamma.*flow matching.*drop --snr-gamma"):
        recipe._check_family_options()
    recipe.cfg = tiny_train("unused", "unused", noise_offset=0.1)
    with pytest.raises(AifError, match="--noise-offset.*flowfam"):
        recipe._check_family_options()


# ---- offset noise -------------------------------------------------------------------------------------------------

@pytest.mark.numerics
@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_noise_offset_adds_one_constant_per_image_and_channel_shared_by_the_pair(offset):
    from aifeedback.families import get_family

    family, scheduler = get_family("sd15"), _ddpm("epsilon")
    latents = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))  # 2 pairs: winners, then losers
    torch.manual_seed(7)
    noisy, t, target = family.training_noise(scheduler, latents, groups=2, noise_offset=offset)
    torch.manual_seed(7)  # by hand, in diffusers' order: the noise, then (when on) the offset, then the timesteps
    noise = torch.randn(2, 3, 5, 5)
    if offset:
        noise = noise + offset * torch.randn(2, 3, 1, 1)
    expected_t = torch.randint(0, 1000, (2,))
    assert torch.equal(t, expected_t.repeat(2))
    assert torch.equal(target, noise.repeat(2, 1, 1, 1))  # epsilon target: the noise itself, the same for w and l
    ab = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, ab.sqrt() * latents + (1 - ab).sqrt() * noise.repeat(2, 1, 1, 1))


# ---- EMA ----------------------------------------------------------------------------------------------------------

def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.numerics
def test_ema_checkpoints_hold_the_hand_computed_average(human, tmp_path):
    from aifeedback.stages.train import run

    decay = 0.2  # low, so the cap min(decay, (1+k)/(10+k)) binds from the third step on
    out = run(tiny_train(human, tmp_path / "run", ema_decay=decay, max_steps=4, checkpoint_every=1,
                         keep_checkpoints=0, lr=1e-3))
    ckpts = [out / "checkpoints" / f"checkpoint-{s:06d}" for s in range(1, 5)]
    trained = [_load(c / "unet" / UNET) for c in ckpts]
    shadow = None
    for n, (c, w) in enumerate(zip(ckpts, trained, strict=True), 1):
        k = n - 1
        d = 0.0 if k == 0 else min(decay, (1 + k) / (10 + k))  # diffusers' EMAModel.get_decay, no warm-up options
        shadow = dict(w) if shadow is None else {key: d * shadow[key] + (1 - d) * w[key] for key in w}
        ema = _load(c / "ema" / "unet" / UNET)
        for key in w:  # float32 updates in another order than this formula: a few ulps of weights ~0.1
            torch.testing.assert_close(ema[key], shadow[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(trained[-1][k], _load(ckpts[-1] / "ema/unet" / UNET)[k]) for k in trained[-1])


@pytest.mark.parametrize("model, rank", [("tiny-sd15", 0), ("tiny-sdxl", 2)])
def test_ema_resume_continues_the_same_average_exactly(human, tmp_path, model, rank):
    from aifeedback.stages.train import run

    kw = dict(model=model, lora_rank=rank, ema_decay=0.5, max_steps=3, checkpoint_every=1, lr=1e-3)
    run(tiny_train(human, tmp_path / "a", **kw))
    run(tiny_train(human, tmp_path / "b", **dict(kw, max_steps=2)))
    run(tiny_train(human, tmp_path / "b", **kw))  # resumes from checkpoint-000002, its ema/ included
    name = "pytorch_lora_weights.safetensors" if rank else f"unet/{UNET}"
    for sub in ("", "ema/"):
        wa = _load(tmp_path / "a/checkpoints/checkpoint-000003" / sub / name)
        wb = _load(tmp_path / "b/checkpoints/checkpoint-000003" / sub / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), sub


def test_export_writes_the_ema_weights_unless_no_ema(human, tmp_path):
    from diffusers import UNet2DConditionModel

    from aifeedback.config import build_config
    from aifeedback.stages.export import ExportConfig
    from aifeedback.stages.export import run as export
    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", ema_decay=0.5, max_steps=2, checkpoint_every=2, lr=1e-3))
    ckpt = out / "checkpoints" / "checkpoint-000002"
    for ema, source in ((True, ckpt / "ema"), (False, ckpt)):
        values = {"checkpoint": str(out), "ema": ema, "out": str(tmp_path / str(ema))}
        folder = export(build_config(ExportConfig, values))
        exported = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
        expected = _load(source / "unet" / UNET)
        assert all(torch.equal(exported[k], expected[k]) for k in expected), ema
    from aifeedback.families.resolve import resolve_tuned

    assert resolve_tuned(str(ckpt / "ema")) == ("unet", str(ckpt / "ema" / "unet"))  # sample/eval --tuned CKPT/ema


def test_ema_decay_of_one_is_refused():
    from aifeedback.config import ConfigError

    with pytest.raises(ConfigError, match="ema_decay 1 would never move"):
        tiny_train("unused", "unused", ema_decay=1.0)


def test_train_help_lists_every_loss_on_its_own_line():
    import re

    from typer.testing import CliRunner

    from aifeedback.cli import app
    from aifeedback.losses import LOSSES

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"}).output
    for name, loss in LOSSES.items():  # at 300 columns no entry wraps: the whole line is there, starting a line
        assert re.search(rf"│\s+{re.escape(f'{name}: {loss.help}')}", out), name
