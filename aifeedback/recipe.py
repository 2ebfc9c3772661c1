"""YAML recipes: files whose top-level keys are stage names; each stage command reads its own section, and
command-line flags override it. Shipped recipes live in the checkout's recipes/ folder (installed as
aifeedback/recipes/); `aif recipes` lists them with their first comment line.
"""

from __future__ import annotations

import datetime
import difflib
from pathlib import Path
from typing import Any

import yaml

from aifeedback.config import ConfigError, build_config, fields, is_text, shown
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


class _RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that records every key given twice in one mapping (PyYAML keeps the last one silently)."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []
        self.root: Any = None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                where = "section" if node is self.root else "key"
                self.duplicates.append((line, f"{where} {shown(key)} is given twice (lines {seen[key]} and {line}); "
                                       "PyYAML would keep the last one silently. Fix: keep one of them"))
            elif key is not None:
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _parse(path: Path) -> Any:
    """The recipe's YAML, refusing keys and sections given twice."""
    loader = _RecipeLoader(path.read_bytes())
    try:
        loader.root = loader.get_single_node()
        data = loader.construct_document(loader.root) if loader.root is not None else None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([problem for _, problem in sorted(loader.duplicates)], str(path))
    return data


def _type_problems(cls: type, section: dict[str, Any]) -> list[str]:
    """Recipe values YAML read as another type than the text field they set (`model: yes` is the boolean True,
    `revision: 1.0` a number): build_config would take their str(), which is not what the recipe says."""
    problems = []
    for f, tp in fields(cls):
        for key in dict.fromkeys((f.name, f.name.replace("_", "-"))) if is_text(tp) else ():
            value = section.get(key)
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, (bool, int, float, datetime.date)) for v in items):
                problems.append(f"{key}: expected text, got {shown(value)} (YAML reads unquoted yes/no/on/off as a "
                                f"boolean and digits as a number). Fix: put the text in quotes ({key}: \"...\")")
    return problems


def load_recipe_section(recipe: str, stage: str) -> tuple[dict[str, Any], str]:
    """The mapping under `stage:` in a recipe, and a label for errors."""
    path = resolve_recipe(recipe)
    try:  # bytes: PyYAML honours a UTF-8/UTF-16 byte-order mark and reports an undecodable byte as a ReaderError
        data = _parse(path) or {}
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
            [f"unknown section {shown(k)} (sections are stage names: {', '.join(STAGES)})" for k in unknown], str(path)
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
        given = {k for k, v in overrides.items() if v is not None}
        problems = _type_problems(cls, {k: v for k, v in values.items() if str(k).replace("-", "_") not in given})
        if problems:
            raise ConfigError(problems, source)
        source += " + command-line options"
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(cls, values, source)
