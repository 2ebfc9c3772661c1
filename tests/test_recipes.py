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
