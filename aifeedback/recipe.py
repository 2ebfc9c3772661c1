"""YAML recipes: files whose top-level keys are stage names; each stage command reads its own section, and
command-line flags override it. Shipped recipes live in the checkout's recipes/ folder (installed as
aifeedback/recipes/); `aif recipes` lists them with their first comment line.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from aifeedback.config import ConfigError, build_config
from aifeedback.stages import STAGES


def recipe_dirs() -> list[Path]:
    """Where shipped recipes live: the checkout's recipes/ folder, or the copy installed with the package."""
    here = Path(__file__).resolve().parent
    return [d for d in (here.parent / "recipes", here / "recipes") if d.is_dir()]


def list_recipes() -> dict[str, tuple[Path, str]]:
    """Shipped recipe name -> (path, first comment line)."""
    out: dict[str, tuple[Path, str]] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.yaml")):
            first = ""
            for line in p.read_text().splitlines():
                if line.startswith("#"):
                    first = line.lstrip("# ").strip()
                    break
            out.setdefault(p.stem, (p, first))
    return out


def resolve_recipe(recipe: str) -> Path:
    """A recipe path, or the name of a shipped recipe."""
    p = Path(recipe)
    if p.is_file():
        return p
    shipped = list_recipes()
    name = p.stem if p.suffix in (".yaml", ".yml") else recipe
    if name in shipped:
        return shipped[name][0]
    close = difflib.get_close_matches(name, list(shipped), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        [f"recipe '{recipe}' is neither a file nor a shipped recipe.{hint} Run `aif recipes` to list them."],
        "--recipe",
    )


def load_recipe_section(recipe: str, stage: str) -> tuple[dict[str, Any], str]:
    """The mapping under `stage:` in a recipe, and a label for errors."""
    path = resolve_recipe(recipe)
    try:  # bytes: PyYAML honours a UTF-8/UTF-16 byte-order mark and reports an undecodable byte as a ReaderError
        data = yaml.safe_load(path.read_bytes()) or {}
    except yaml.reader.ReaderError as e:
        raise ConfigError([f"not UTF-8 text, perhaps a binary file ({e.reason} at byte {e.position}). Fix: a recipe "
                           f"is a YAML text file; save it as UTF-8"], str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of stage names to settings"], str(path))
    unknown = [k for k in data if k not in STAGES]
    if unknown:
        raise ConfigError(
            [f"unknown section '{k}' (sections are stage names: {', '.join(STAGES)})" for k in unknown], str(path)
        )
    if stage not in data:
        have = ", ".join(data) or "none"
        raise ConfigError([f"no '{stage}' section (this recipe has: {have})"], str(path))
    section = data[stage] or {}
    if not isinstance(section, dict):
        raise ConfigError([f"section '{stage}' must be a mapping"], str(path))
    return section, f"{path} [{stage}]"


def load_stage_config(cls: type, stage: str, recipe: str | None, overrides: dict[str, Any]) -> Any:
    """Recipe section (if any) with command-line overrides applied on top, validated as one."""
    values: dict[str, Any] = {}
    source = "command-line options"
    if recipe:
        values, source = load_recipe_section(recipe, stage)
        source += " + command-line options"
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(cls, values, source)
