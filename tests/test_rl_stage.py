"""`aif rl`: the stage end to end on tiny-sd3 (grpo, LoRA, one process), its resume, and what preflight refuses
before any model loads."""

import dataclasses
import io

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aifeedback.cli import app
from aifeedback.config import build_config
from aifeedback.errors import AifError
from aifeedback.rl import ALGORITHMS
from aifeedback.stages.rl_config import RLConfig, reward_weights
from tests.rl_helpers import lora, metrics, prompt_file, run_rl

TINY = dict(model="tiny-sd3", prompts_per_epoch=2, group_size=2, steps=3, reward="redness", lora_rank=2, batch_size=2,
            resolution=32, progress=False)


@pytest.fixture()
def prompts(tmp_path):
    return prompt_file(tmp_path)


def rl(prompts, out, **kw):
    return run_rl(TINY, prompts, out, **kw)


def test_grpo_on_tiny_sd3_runs_logs_the_ratio_check_and_resumes_bitwise(prompts, tmp_path):
    straight = rl(prompts, tmp_path / "straight", epochs=2)
    m = metrics(straight)
    assert [r["epoch"] for r in m] == [1, 2] and [r["step"] for r in m] == [2, 4]
    # the first update of each epoch recomputes the stored log-probs: ratio exactly 1
    assert [r["ratio_dev_first"] for r in m] == [0.0, 0.0]
    assert all(r["reward/redness"] == r["reward_mean"] for r in m)  # one reward, weight 1: the raw reward
    assert all(0.0 <= r["all_equal_share"] <= 1.0 and r["grad_norm"] > 0 for r in m)
    assert any(not (a == b).all() for a, b in zip(lora(straight, 1).values(), lora(straight, 2).values(),
                                                 strict=True))  # epoch 2 trained the adapters

    from datasets import load_dataset

    rows = load_dataset("parquet", data_dir=str(straight / "rollouts" / "data"), split="train")
    assert rows["epoch"] == [0, 0, 0, 0, 1, 1, 1, 1] and rows["k"] == [0, 1] * 4
    assert rows["prompt"][:4] == ["a red apple", "a red apple", "a blue car", "a blue car"]
    assert rows["prompt"][4:6] == ["a green tree"] * 2  # epoch 1 takes the next prompts, cycling
    assert rows["reward"][:4] == rows["reward_redness"][:4]
    assert Image.open(io.BytesIO(rows["image"][0])).size == (32, 32) == (rows["width"][0], rows["height"][0])
    assert sum(rows["advantage"][:2]) == pytest.approx(0, abs=1e-6)  # a group's advantages sum to 0
    assert m[0]["reward_mean"] == pytest.approx(sum(rows["reward"][:4]) / 4)

    resumed = tmp_path / "resumed"
    rl(prompts, resumed, epochs=1)
    rl(prompts, resumed, epochs=2)  # the same command with more epochs continues from checkpoint-000001
    assert metrics(resumed) == [dict(r, images_per_s=x["images_per_s"], updates_per_s=x["updates_per_s"])
                                for r, x in zip(m, metrics(resumed), strict=True)]
    a, b = lora(straight, 2), lora(resumed, 2)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_ddpo_on_unet_families_samples_with_ddim_and_passes_the_ratio_check(prompts, tmp_path, model):
    m = metrics(rl(prompts, tmp_path / "run", model=model, epochs=2, kl_beta=0.1))
    assert [r["ratio_dev_first"] for r in m] == [0.0, 0.0] and all(r["grad_norm"] > 0 for r in m)
    assert all(r["approx_kl"] > 0 for r in m)  # later updates of an epoch moved the policy (eta = 1: a real density)
    out = tmp_path / "run"
    assert (out / "checkpoints" / "checkpoint-000002" / "pytorch_lora_weights.safetensors").is_file()


def test_the_closing_hint_samples_the_policy_at_the_guidance_it_trained_with(prompts, tmp_path, capsys):
    out = rl(prompts, tmp_path / "run", epochs=1, guidance_scale=4.5)
    assert f"next: aif sample --model tiny-sd3 --tuned {out} --guidance 4.5" in capsys.readouterr().out


def test_kl_beta_adds_the_kl_to_the_reference(prompts, tmp_path):
    m = metrics(rl(prompts, tmp_path / "kl", epochs=2, kl_beta=0.5, lr=1e-2))
    # the first update starts from the reference (LoRA B = 0): KL 0; later ones have moved away from it
    assert all("kl_loss" in r for r in m) and m[0]["ratio_dev_first"] == 0.0
    assert m[1]["kl_loss"] > 0
    assert m[1]["loss"] == pytest.approx(m[1]["policy_loss"] + 0.5 * m[1]["kl_loss"], abs=2e-10)  # rounded to 1e-10


def test_reward_weights_parse_name_weight_lists():
    assert reward_weights("pickscore:1.0,aesthetic:0.5") == {"pickscore": 1.0, "aesthetic": 0.5}
    assert reward_weights("pickscore:tiny:0.5, color:red") == {"pickscore:tiny": 0.5, "color:red": 1.0}
    assert reward_weights("redness:-1") == {"redness": -1.0}
    for bad, why in [("redness,,aesthetic", "empty entry"), (":0.5", "no scorer"), ("redness,redness:2", "twice")]:
        with pytest.raises(AifError, match=why):
            reward_weights(bad)


@pytest.mark.parametrize("kw, error", [
    (dict(reward="redness:1,pikscore:0.5"), "pikscore"),
    (dict(model="tiny-sd15", algorithm="flowonly"), "does not support family 'tiny-sd15' \\(unet\\): the reason"),
])
def test_a_misspelt_reward_or_unsupported_family_fails_before_any_model_loads(prompts, tmp_path, monkeypatch, kw,
                                                                            error, aif_cache):
    from aifeedback.zoo import tiny_pipeline_path

    tiny_pipeline_path(kw.get("model", "tiny-sd3"))  # built, so preflight can read its config files
    import aifeedback.families.loading as loading

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_pipeline", no_load)
    # an algorithm for flow families only (the shipped ones support both kinds)
    flow_only = dataclasses.replace(ALGORITHMS["grpo"], name="flowonly", kinds={"flow": "x"},
                                    refused={"unet": "the reason"})
    monkeypatch.setitem(ALGORITHMS._entries, "flowonly", flow_only)
    if kw.get("algorithm") == "flowonly":  # past the config's grpo-only check, to reach preflight
        monkeypatch.setattr(RLConfig, "validate", lambda self: [])
    with pytest.raises(AifError, match=error):
        rl(prompts, tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()


def test_a_zero_noise_level_is_refused_by_the_config():
    with pytest.raises(AifError, match="noise_level 0 makes flow sampling deterministic"):
        build_config(RLConfig, dict(noise_level=0))
    build_config(RLConfig, dict(noise_level=0, algorithm="nft"))  # nft samples with the ODE: no noise needed


@pytest.mark.parametrize("kw, error", [
    (dict(sampler="ode"), "--sampler ode with --algorithm grpo"),
    (dict(algorithm="nft", nft_beta=0), "nft_beta 0"),
    (dict(steps=3, timestep_fraction=0.3), "trains no step; raise it to at least 0.333333"),
    (dict(lora_rank=0, base_quantization="int8"), "lora_rank is 0 .a full fine-tune"),  # a quantized base is frozen
])
def test_the_config_refuses_settings_that_cannot_train(kw, error):
    with pytest.raises(AifError, match=error):
        build_config(RLConfig, kw)


def test_a_misspelt_algorithm_is_refused_and_help_lists_the_algorithms_one_per_line():
    with pytest.raises(AifError, match="algorithm"):
        build_config(RLConfig, dict(algorithm="gpro"))
    result = CliRunner().invoke(app, ["rl", "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert result.exit_code == 0, result.output
    lines = [ln.replace("│", " ").strip() for ln in result.output.splitlines()]
    for name in ALGORITHMS:  # each algorithm's description starts its own line
        assert any(ln.startswith(f"{name}: ") for ln in lines), result.output


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-z-image", "tiny-qwen-image", "tiny-flux2", "tiny-flux2-klein", "tiny-flux"])
def test_grpo_runs_one_epoch_on_the_2026_families(prompts, tmp_path, model):
    (m,) = metrics(rl(prompts, tmp_path / "run", model=model, epochs=1))
    assert m["ratio_dev_first"] == 0.0 and m["grad_norm"] > 0
    assert all(v == v and abs(v) != float("inf") for v in m.values() if isinstance(v, float))  # finite
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-000001" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("model", ["tiny-flux2", "tiny-flux2-klein", "tiny-qwen-image", "tiny-flux", "tiny-z-image",
                                   "tiny-sd3"])
def test_the_flow_sampler_steps_on_the_pipelines_own_sigmas(model):
    """aif rl samples on the grid the family's pipeline samples on (FLUX.1-dev / Qwen-Image shift it by image size,
    FLUX.2 by its empirical mu; diffusers' scheduler refuses set_timesteps without mu where it shifts)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline

    pipe = load_pipeline(model)
    pipe(prompt="a cat", num_inference_steps=3, height=32, width=32, output_type="latent")
    sampler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    patches = (32 // (2 * pipe.vae_scale_factor)) ** 2
    sampler.set_timesteps(3, **detect(pipe).sampling_schedule(pipe.scheduler.config, patches, 3))
    assert torch.allclose(sampler.sigmas, pipe.scheduler.sigmas.cpu())


@pytest.mark.slow
def test_grpo_on_an_int8_base_of_tiny_flux2(prompts, tmp_path, monkeypatch):
    """`aif rl --base-quantization int8` (torchao, CPU): the frozen transformer and text encoder quantized, the LoRA
    trained on top, the first update's ratio exactly 1."""
    pytest.importorskip("torchao")
    import aifeedback.stages.rl as rl_stage
    from aifeedback.families.quantize import is_quantized

    seen, load = {}, rl_stage.load_pipeline

    def spy(*args, **kw):
        pipe = load(*args, **kw)
        seen.update(transformer=is_quantized(pipe.transformer), text_encoder=is_quantized(pipe.text_encoder))
        return pipe

    monkeypatch.setattr(rl_stage, "load_pipeline", spy)
    (m,) = metrics(rl(prompts, tmp_path / "run", model="tiny-flux2", epochs=1, base_quantization="int8"))
    assert seen == {"transformer": True, "text_encoder": True}
    assert m["ratio_dev_first"] == 0.0 and m["grad_norm"] > 0 and m["loss"] == m["loss"]
