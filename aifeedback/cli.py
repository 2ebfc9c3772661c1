"""The `aif` command line: one command per stage, whose options are generated from the stage's config dataclass.

Every config field becomes a flag with the field's one-line help, so `--help`, recipes and the dataclass can never
drift apart. `--recipe` takes a YAML file or a shipped recipe name; flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from typing import Any, Callable, Optional

import typer

from aifeedback.collection import skip_exit_collection
from aifeedback.config import _unwrap_optional, fields, type_name
from aifeedback.errors import AifError, write_error
from aifeedback.recipe import list_recipes, load_stage_config
from aifeedback.stages import STAGES, Stage

app = typer.Typer(
    name="aif",
    help="aifeedback: align text-to-image diffusion models with human or AI preference pairs (Diffusion-DPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version() -> str:
    """The installed distribution's version; the package's own when it is run from a checkout without installing."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("aifeedback")
    except PackageNotFoundError:
        from aifeedback import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"aif {version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print the version and exit."),
) -> None:
    """Options of `aif` itself (the app's help text is set on `app`)."""


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _help(text: str) -> str:
    """The text shown literally: in rich markup mode, our `[type; default: ...]` suffix would be read as a tag."""
    if app.rich_markup_mode == "rich":
        from rich.markup import escape

        return escape(text)
    return text


def _kind(tp, meta: dict) -> str:
    """The field's type for --help; a str field restricted to choices shows them."""
    if not meta.get("choices"):
        return type_name(tp)
    _, optional = _unwrap_optional(tp)
    return "|".join(meta["choices"]) + (" or null" if optional else "")


def _metavar(tp, meta: dict) -> str:
    """What --help shows after a flag: the choices exactly as they are typed (lowercase), else the type in capitals."""
    kind = _kind(tp, meta).split(" ")[0]
    return kind if "|" in kind else kind.upper()


def _shown(default: Any) -> str:
    """A default as a recipe would spell it."""
    if isinstance(default, list):
        return ",".join(map(str, default)) or "(empty)"
    if isinstance(default, bool) or default is None:
        return {True: "true", False: "false", None: "null"}[default]
    return str(default) if default != "" else '""'


def _param(f, tp) -> inspect.Parameter:
    meta = f.metadata
    inner, _ = _unwrap_optional(tp)
    flag = f.name.replace("_", "-")
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    help_text = _help(f"{meta['help']} [{_kind(tp, meta)}; default: {_shown(default)}]")
    if meta.get("positional"):
        spec = typer.Argument(None, help=help_text, show_default=False)
        annotation = Optional[str]
    elif inner is bool:
        spec = typer.Option(None, f"--{flag}/--no-{flag}", help=help_text, show_default=False)
        annotation = Optional[bool]
    else:
        spec = typer.Option(None, f"--{flag}", help=help_text, show_default=False, metavar=_metavar(tp, meta))
        annotation = Optional[str]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=spec, annotation=annotation)


def make_command(stage: Stage) -> Callable[..., None]:
    """A typer command whose options are the stage config's fields (all optional: unset ones keep the recipe or
    the default)."""
    recipe = inspect.Parameter(
        "recipe", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
        default=typer.Option(None, "--recipe",
                             help="YAML recipe file or shipped recipe name (see `aif recipes`); flags override it."),
    )
    positional = [_param(f, tp) for f, tp in fields(stage.config) if f.metadata.get("positional")]
    others = [_param(f, tp) for f, tp in fields(stage.config) if not f.metadata.get("positional")]

    def command(**kwargs: Any) -> None:
        recipe_name = kwargs.pop("recipe", None)
        cfg = None
        try:
            cfg = load_stage_config(stage.config, stage.name, recipe_name, kwargs)
            stage.run(cfg)
        except AifError as e:
            _fail(e)
        except Exception as e:  # a full or read-only disk wherever a stage writes (torch, safetensors: not OSError)
            clear = write_error(e, getattr(cfg, "out", None))
            if clear is None:
                raise
            _fail(clear)

    command.__signature__ = inspect.Signature(positional + [recipe] + others)  # type: ignore[attr-defined]
    return command


def _register_stages() -> None:
    for stage in STAGES.values():
        app.command(stage.name, help=stage.help)(make_command(stage))


@app.command("models")
def models_cmd() -> None:
    """List the model families, offline tiny/toy models, common real models, and scorers."""
    from aifeedback.families import FAMILIES
    from aifeedback.families.resolve import KNOWN_MODELS, tiny_names
    from aifeedback.scoring.scorers import list_scorers

    sections = [
        ("Model families (detected from the model folder):", FAMILIES.describe()),
        ("Offline models (built on first use, cached under $AIF_CACHE):", tiny_names()),
        ("Real models (hub ids; any other diffusers id or local folder of a family above works too):", KNOWN_MODELS),
        ("Scorers (--scorer NAME or NAME:MODEL, e.g. pickscore:tiny):", list_scorers()),
    ]
    for title, entries in sections:
        typer.echo(title)
        for name, desc in entries.items():
            typer.echo(f"  {name:<44} {desc}")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes (use the name with --recipe)."""
    for name, (_path, first) in list_recipes().items():
        typer.echo(f"  {name:<40} {first}")


_register_stages()


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    skip_exit_collection()
    app(prog_name="aif")


if __name__ == "__main__":
    sys.exit(main())
