"""Every shipped recipe loads into the config of each stage it has a section for."""

import re

import pytest
import yaml

from aifeedback.recipe import list_recipes, load_stage_config
from aifeedback.stages import STAGES

RECIPES = list_recipes()


def test_recipes_are_listed():
    assert RECIPES, "no shipped recipes found"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads(name):
    path, first_line = RECIPES[name]
    text = path.read_text()
    assert text.startswith("#") and first_line, f"{path} must open with a comment saying what it does"
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert re.search(r"\baif(eedback)? (generate|score|train|export|sample|eval|demo|rl)\b", comments), \
        f"{path} must say in its opening comment the command that runs it"
    sections = yaml.safe_load(text)
    for stage in sections:
        cls = STAGES[stage].config
        load_stage_config(cls, stage, name, {})  # raises ConfigError listing every problem


RL_RECIPES = {  # the values the reference configs give (the recipes' comments name each file)
    "sd35m_grpo_pickscore": dict(model="stabilityai/stable-diffusion-3.5-medium", prompts_per_epoch=48, group_size=24,
                                 steps=10, noise_level=0.7, resolution=512, reward="pickscore", global_std=True,
                                 kl_beta=0.01, clip_range=1e-4, lr=3e-4, lora_rank=32, lora_alpha=64.0,
                                 ema_decay=0.9, seed=42, guidance_scale=4.5, timestep_fraction=0.99,
                                 eval_steps=40, eval_every=60),
    "flux_dev_grpo_lora": dict(model="black-forest-labs/FLUX.1-dev", group_size=24, steps=10, noise_level=0.7,
                               resolution=512, kl_beta=0.01, lr=3e-4, lora_rank=32, lora_alpha=64.0, global_std=True,
                               guidance_scale=1.0, timestep_fraction=0.99, eval_steps=40),
    "sdxl_ddpo_aesthetic": dict(model="stabilityai/stable-diffusion-xl-base-1.0", steps=50, reward="aesthetic",
                                kl_beta=0.0, lr=3e-4, lora_rank=4, epochs=200, batch_size=4, clip_range=1e-4,
                                guidance_scale=5.0, timestep_fraction=1.0),
}


@pytest.mark.parametrize("name", sorted(RL_RECIPES))
def test_rl_recipes_run_the_rl_stage_with_the_reference_settings(name, monkeypatch):
    from typer.testing import CliRunner

    from aifeedback.cli import app
    from aifeedback.stages import Stage

    ran = []
    monkeypatch.setattr(Stage, "run", lambda self, cfg: ran.append((self.name, cfg)))
    result = CliRunner().invoke(app, ["rl", "--recipe", name, "--epochs", "3"])
    assert result.exit_code == 0, result.output
    (stage, cfg), = ran
    assert stage == "rl" and cfg.epochs == 3 and cfg.algorithm == "grpo"  # the flag overrides the recipe
    assert {k: getattr(cfg, k) for k in RL_RECIPES[name] if k != "epochs"} == \
        {k: v for k, v in RL_RECIPES[name].items() if k != "epochs"}
    assert f"aif rl --recipe {name}" in RECIPES[name][0].read_text()  # its opening comment says how to run it


@pytest.mark.parametrize("name", ["flux2_dev_dpo_lora", "flux2_klein_dpo_lora", "qwen_image_dpo_lora",
                                  "z_image_dpo_lora"])
def test_2026_family_recipes_carry_the_diffusers_scripts_values(name):
    """The LoRA DPO recipes of FLUX.2, Qwen-Image and Z-Image: diffusers' train_dreambooth_lora_* defaults (rank 4,
    AdamW lr 1e-4, weight decay 1e-4, constant lr, clip 1.0) and README commands (1024 px, 1 x 4 accumulated), the
    house flow recipes' DPO beta; FLUX.2 [dev] on an NF4 base (the one-GPU plan), generation included."""
    train = load_stage_config(STAGES["train"].config, "train", name, {})
    house = load_stage_config(STAGES["train"].config, "train", "flux_dev_dpo_lora", {})
    assert (train.lora_rank, train.lr, train.weight_decay, train.lr_schedule, train.warmup_steps,
            train.max_grad_norm, train.optimizer) == (4, 1e-4, 1e-4, "constant", 0, 1.0, "adamw")
    assert (train.resolution, train.batch_size, train.grad_accum, train.loss, train.beta) == (1024, 1, 4, "dpo",
                                                                                               house.beta)
    generate = load_stage_config(STAGES["generate"].config, "generate", name, {})
    assert generate.model == train.model and generate.resolution == 1024
    quant = "nf4" if name == "flux2_dev_dpo_lora" else "none"
    assert (train.base_quantization, generate.base_quantization) == (quant, quant)
    text = RECIPES[name][0].read_text()
    section = text[text.index("\ntrain:"):]
    keyed = [line for line in section.splitlines()[2:] if line.startswith("  ") and ":" in line]
    unsourced = [line for line in keyed if "#" not in line and line.split(":")[0].strip() not in
                 ("data", "model", "loss", "checkpoint_every", "validation_every", "out")]
    assert not unsourced, f"{name}: every training value names its source: {unsourced}"
