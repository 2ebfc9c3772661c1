"""`aif rl`'s sampling options, checked against the stored trajectory and by hand: --sde-window (noise and log-probs
only inside the window, Euler / DDIM eta 0 steps elsewhere), --timestep-fraction (which steps are trained)."""

import pytest
import torch

from aifeedback.config import build_config
from aifeedback.errors import AifError
from aifeedback.families.base import vae_factor
from aifeedback.stages.rl import RLRecipe
from aifeedback.stages.rl_config import RLConfig
from aifeedback.stages.rl_rollout import choose_train_steps, evaluate, evaluation_share, predict, reference

TINY = dict(prompts_per_epoch=2, group_size=2, steps=3, reward="redness", lora_rank=2, batch_size=4, resolution=32,
            progress=False, epochs=1)


def recipe(tmp_path, **kw):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "prompts.txt"
    path.write_text("a red apple\na blue car\n")
    r = RLRecipe(build_config(RLConfig, dict(TINY, prompts=str(path), out=str(tmp_path / "run"), **kw)))
    r.setup()
    return r


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-sd15"])
def test_sde_window_samples_ode_steps_outside_it_and_trains_only_inside(tmp_path, model):
    r = recipe(tmp_path, model=model, sde_window="1:2")
    rollout = r.sample(0)
    lat, cond = rollout.latents, rollout.conditioning
    assert (rollout.log_probs[:, [0, 2]] == 0).all() and (rollout.log_probs[:, 1] != 0).all()
    assert (rollout.train_steps == 1).all()  # grpo trains the window's steps only
    sampler = r.sampler
    with torch.no_grad():
        for k in (0, 2):  # by hand: the deterministic step from the stored x_k gives the stored x_k+1
            t = sampler.timesteps[k].expand(len(lat))
            out = predict(r, lat[:, k], t, cond).float()
            if model == "tiny-sd3":
                want = lat[:, k] + out * (sampler.sigmas[k + 1] - sampler.sigmas[k])
            else:  # DDIM eta 0 (epsilon prediction), previous timestep t - T / steps (ddpo-pytorch's rule)
                ac = sampler.alphas_cumprod
                a, a_prev = ac[t[0]], ac[max(int(t[0]) - 1000 // 3, 0)]
                x0 = (lat[:, k] - (1 - a).sqrt() * out) / a.sqrt()
                want = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * out
            assert torch.allclose(lat[:, k + 1], want, atol=1e-5)
        # the window's step is stochastic: the stored x_2 is not the ODE step from x_1
        t = sampler.timesteps[1].expand(len(lat))
        out = predict(r, lat[:, 1], t, cond).float()
        if model == "tiny-sd3":
            assert not torch.allclose(lat[:, 2], lat[:, 1] + out * (sampler.sigmas[2] - sampler.sigmas[1]), atol=1e-3)
    sums = r.update(rollout)
    assert sums["ratio_dev_first"] == 0.0  # the window step's log-prob recomputed exactly


@pytest.mark.parametrize("steps", [1, 3, 10, 16, 40])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9, 0.99, 1.0])
def test_grpo_trains_the_first_steps_in_order_as_flow_grpo(steps, fraction):
    # flow_grpo scripts/train_sd3.py: num_train_timesteps = int(config.sample.num_steps * timestep_fraction), then
    # `for j in range(num_train_timesteps)` for every sample of the batch
    upstream = list(range(int(steps * fraction)))
    if not upstream:  # a fraction that trains no step is refused
        with pytest.raises(AifError, match="trains no step"):
            build_config(RLConfig, dict(steps=steps, timestep_fraction=fraction))
        return
    cfg = build_config(RLConfig, dict(steps=steps, timestep_fraction=fraction))
    rows = choose_train_steps(cfg, 5, torch.Generator().manual_seed(3))
    assert rows.tolist() == [upstream] * 5


def test_nft_and_awm_choose_steps_per_trajectory_from_the_generator():
    for algorithm in ("nft", "awm"):
        cfg = build_config(RLConfig, dict(steps=10, timestep_fraction=0.99, algorithm=algorithm))  # 9 of 10 steps
        assert cfg.train_steps == 9
        a = choose_train_steps(cfg, 4, torch.Generator().manual_seed(3))
        b = choose_train_steps(cfg, 4, torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and a.shape == (4, 9)
        assert all(len(set(row.tolist())) == 9 and set(row.tolist()) <= set(range(10)) for row in a)
        assert len({tuple(row.tolist()) for row in a}) > 1  # a choice per trajectory
    full = choose_train_steps(build_config(RLConfig, dict(steps=4, algorithm="nft")), 2, torch.Generator())
    assert full.tolist() == [[0, 1, 2, 3]] * 2  # fraction 1: every step, in order
    nft = build_config(RLConfig, dict(steps=6, algorithm="nft", timestep_fraction=0.5))
    assert nft.train_steps == 3 and nft.trainable_steps == list(range(6))


def test_grpo_with_an_sde_window_trains_the_first_steps_of_the_window():
    window = build_config(RLConfig, dict(steps=6, sde_window="2:5", timestep_fraction=0.67))
    assert choose_train_steps(window, 3, torch.Generator().manual_seed(0)).tolist() == [[2, 3]] * 3


def test_grpo_with_a_timestep_fraction_trains_the_chosen_steps_of_the_stored_trajectory(tmp_path):
    r = recipe(tmp_path, model="tiny-sd3", timestep_fraction=0.67, kl_beta=0.1)
    rollout = r.sample(0)
    assert rollout.train_steps.shape == (4, 2)
    assert r.update(rollout)["ratio_dev_first"] == 0.0  # per-row steps index the stored latents and log-probs


@pytest.mark.parametrize("kw, error", [
    (dict(sde_window="2"), "write START:END"),
    (dict(sde_window="2:1"), "0 <= START < END <= steps"),
    (dict(sde_window="0:11", steps=10), "0 <= START < END <= steps \\(10\\)"),
    (dict(sde_window="0:1", algorithm="nft"), "with ODE sampling"),
])
def test_a_bad_sde_window_is_refused_by_the_config(kw, error):
    with pytest.raises(AifError, match=error):
        build_config(RLConfig, kw)


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-sd15"])
def test_guidance_scale_guides_the_policy_in_sampling_and_update_and_keeps_the_ratio_check(tmp_path, model):
    r = recipe(tmp_path, model=model, guidance_scale=4.5, kl_beta=0.1)
    rollout = r.sample(0)
    x, cond = rollout.latents[:, 1], rollout.conditioning
    t = r.sampler.timesteps[1].expand(len(x))
    with torch.no_grad():  # by hand: u + g (c - u), two separate passes of the raw denoiser
        text = r.family.predict(r.model, x, t, cond, r.micro.expand(len(x), -1)).float()
        empty = {k: r.family.encode_prompts(r.text, [""])[k].expand(len(x), *v.shape[1:]) for k, v in cond.items()}
        uncond = r.family.predict(r.model, x, t, empty, r.micro.expand(len(x), -1)).float()
        guided = predict(r, x, t, cond)
    assert torch.allclose(guided, uncond + 4.5 * (text - uncond), atol=1e-4)
    assert not torch.allclose(guided, text, atol=1e-4)
    assert r.update(rollout)["ratio_dev_first"] == 0.0  # the update recomputes the guided policy's log-probs


def test_guidance_scale_is_refused_for_a_guidance_distilled_model(tmp_path):
    with pytest.raises(AifError, match="guidance-distilled"):
        recipe(tmp_path, model="tiny-flux-dev", guidance_scale=4.5)


def test_grpo_samples_a_flow_model_with_resolution_dependent_shift(tmp_path):
    # tiny-flux-dev's scheduler has use_dynamic_shifting: set_timesteps needs FluxPipeline's mu and sigmas
    r = recipe(tmp_path, model="tiny-flux-dev")
    side = 32 // vae_factor(r.vae.config) // 2  # FLUX packs 2x2 latent patches into one token
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = r.sampler.config
    mu = calculate_shift(side**2, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    s = torch.linspace(1.0, 1 / 3, 3, dtype=torch.float64)
    want = torch.exp(torch.tensor(mu, dtype=torch.float64)) / (torch.exp(torch.tensor(mu)) + (1 / s - 1))
    assert torch.allclose(r.sampler.sigmas[:3].double(), want, atol=1e-6) and r.sampler.sigmas[3] == 0
    rollout = r.sample(0)
    assert r.update(rollout)["ratio_dev_first"] == 0.0


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-sd15"])
def test_eval_steps_logs_the_ode_reward_of_fixed_prompts_without_touching_training(tmp_path, model):
    import json

    from aifeedback.rl.sde import ddim_step, flow_ode_step
    from aifeedback.scoring.scorers import load_scorer

    base = dict(model=model, epochs=2, prompts_per_epoch=1, group_size=2, batch_size=2)
    plain = recipe(tmp_path / "plain", **base)
    plain.train()
    r = recipe(tmp_path / "eval", **base, eval_steps=4, eval_every=2, eval_prompts=2)
    r.train()
    m = [json.loads(x) for x in (tmp_path / "eval" / "run" / "metrics.jsonl").read_text().splitlines()]
    p = [json.loads(x) for x in (tmp_path / "plain" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/reward" not in m[0] and m[1]["eval/reward"] == m[1]["eval/reward/redness"]
    assert [x["loss"] for x in m] == [x["loss"] for x in p]  # the evaluation changes no training value
    # by hand: the same prompts, noise and ODE with the final weights
    s = r.eval_sampler
    assert len(s.timesteps) == 4
    cond = r.family.encode_prompts(r.text, ["a red apple", "a blue car"])
    x = torch.randn((2, r.vae.config.latent_channels, 32 // vae_factor(r.vae.config), 32 // vae_factor(r.vae.config)),
                    generator=torch.Generator().manual_seed(0))
    x = x * s.init_noise_sigma if model == "tiny-sd15" else x
    with torch.no_grad():
        for k in range(4):
            t = s.timesteps[k].expand(2)
            out = r.family.predict(r.model, x, t, cond, r.micro.expand(2, -1))
            x = (flow_ode_step(out, x, s.sigmas[k], s.sigmas[k + 1]) if model == "tiny-sd3" else
                 ddim_step(out, x, t, s.alphas_cumprod, 4, eta=0.0)).prev_sample
    from aifeedback.families.sampling import decode_latents

    images = decode_latents(r.pipe, x)
    want = sum(load_scorer("redness", "cpu").score(images, ["a red apple", "a blue car"])) / 2
    assert m[1]["eval/reward"] == pytest.approx(want, rel=1e-4)


def test_processes_share_the_evaluation_pass_and_gather_the_scores_of_one_process(tmp_path):
    # 5 prompts (the list cycles) in batches of 2: batch b is process b mod W's, each row from its own noise
    r = recipe(tmp_path, model="tiny-sd15", eval_steps=2, eval_prompts=5, batch_size=2, reward="redness:1,brightness:2")
    one = evaluation_share(r, 0, 1)
    first, second = evaluation_share(r, 0, 2), evaluation_share(r, 1, 2)
    assert [i for i, _ in first] == [0, 1, 4] and [i for i, _ in second] == [2, 3]
    assert sorted(first + second, key=lambda item: item[0]) == one  # exactly: the same batches, the same noise rows
    assert len({scores["redness"] for _, scores in one}) > 1
    got = evaluate(r)
    for spec in ("redness", "brightness"):
        assert got[f"eval/reward/{spec}"] == pytest.approx(sum(s[spec] for _, s in one) / 5, rel=1e-6)
    assert got["eval/reward"] == pytest.approx(got["eval/reward/redness"] + 2 * got["eval/reward/brightness"])


def test_the_lora_reference_is_the_base_and_switching_to_it_walks_no_modules(tmp_path, monkeypatch):
    # the KL's reference forward runs once per trained step: switching the adapters off and on around it used to
    # walk every module of the network twice (diffusers' disable_adapters / enable_adapters) each time
    r = recipe(tmp_path, model="tiny-sd3", kl_beta=0.01)
    base = r.accelerator.unwrap_model(r.model)
    lora = [p for name, p in base.named_parameters() if "lora_" in name]
    with torch.no_grad():
        for p in lora:
            p.add_(0.05)  # a policy away from the base (lora_B starts at 0)
    cond = r.family.encode_prompts(r.text, ["a red apple"])
    x = torch.randn(1, *r.family.latent_shape(r.vae.config, r.resolution), generator=torch.Generator().manual_seed(0))
    t = r.sampler.timesteps[:1]
    with torch.no_grad():
        policy = predict(r, x, t, cond)
        base.disable_adapters()
        expected = predict(r, x, t, cond)
        base.enable_adapters()
        with reference(r) as model:
            assert not any(p.requires_grad for p in lora)
            ref = predict(r, x, t, cond, model)
        again = predict(r, x, t, cond)
    assert torch.equal(ref, expected) and not torch.equal(ref, policy) and torch.equal(again, policy)
    assert all(p.requires_grad for p in lora)
    # switching off and back on (no forward in between) walks at most the LoRA layers' own few modules (peft's
    # per-layer switch does), not the network's
    inside = {id(m) for layer in r.adapters for m in layer.modules()}
    walks = []
    named_modules = torch.nn.Module.named_modules
    monkeypatch.setattr(torch.nn.Module, "named_modules",
                        lambda self, *a, **k: walks.append(self) or named_modules(self, *a, **k))
    with reference(r):
        pass
    assert [type(m).__name__ for m in walks if id(m) not in inside] == []
