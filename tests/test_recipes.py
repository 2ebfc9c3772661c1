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
    assert re.search(r"\baif(eedback)? (generate|score|train|export|sample|eval|demo)\b", comments), \
        f"{path} must say in its opening comment the command that runs it"
    sections = yaml.safe_load(text)
    for stage in sections:
        cls = STAGES[stage].config
        load_stage_config(cls, stage, name, {})  # raises ConfigError listing every problem


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
