"""Typed stage configs: dataclass fields with defaults and one-line help, filled from YAML recipes and flags.

A stage config is a plain dataclass whose fields are declared with `option(...)`. `build_config` merges a recipe
section and command-line overrides into it, coerces strings ("1e-4", "a,b,c", "true"), and checks every value,
raising one ConfigError that lists *all* problems (unknown keys with a "did you mean", wrong types, out-of-range
values), so a user fixes a recipe in one go.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from aifeedback.errors import AifError


class ConfigError(AifError, ValueError):
    """One or more config problems; the message lists each on its own line."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: typing.Sequence[str] | None = None,
    identity: bool = True,
    positional: bool = False,
    path: bool = False,
) -> Any:
    """Declare a config field.

    identity=False marks settings that do not change a stage's results (batch size, device, progress bars), so a
    rerun that only changes them resumes instead of being refused. positional=True makes it a CLI argument.
    path=True marks an input that may name a local file or folder (besides a hub id or a built-in name): the job's
    identity records it resolved, and the stage refuses an --out that overlaps it.
    """
    meta = dict(help=help, min=min, max=max, choices=choices, identity=identity, positional=positional, path=path)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) pairs of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """A short human name for a field type, for errors and --help."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is Literal:
        name = "|".join(str(a) for a in typing.get_args(inner))
    elif typing.get_origin(inner) is list:
        name = f"list of {type_name(typing.get_args(inner)[0])} (comma-separated)"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def is_text(tp: Any) -> bool:
    """Whether a field holds free text: str, Optional[str] or a list of str (not a Literal of fixed words)."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        inner = typing.get_args(inner)[0]
    return inner is str


_SHOW = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxlevel = 40, 40, 40, 4, 4, 2


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short without building the whole of a long one."""
    return _SHOW.repr(value)


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _coerce(value: Any, tp: Any) -> Any:
    """Convert value to tp, accepting strings from the command line; raise ValueError with a short reason."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ValueError("must not be null")
    origin = typing.get_origin(inner)
    if origin is Literal:
        allowed = typing.get_args(inner)
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(inner)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {_shape(value)}")
        return [_coerce(v, item_tp) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"expected true/false, got {shown(value)}")
    if inner in (int, float) and not isinstance(value, (int, float, str)):  # int()/float() would raise TypeError
        raise ValueError(f"expected {'an integer' if inner is int else 'a number'}, got {_shape(value)}")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {shown(value)}")
        try:
            return int(value) if not isinstance(value, str) else int(value.replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {shown(value)}") from None
    if inner is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {shown(value)}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"expected a number, got {shown(value)}") from None
        if not math.isfinite(number):  # NaN guidance renders as if it were off, infinite guidance black images
            raise ValueError(f"must be a finite number (not NaN or infinity), got {shown(value)}")
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {_shape(value)}")
        return str(value)
    if inner is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {_shape(value)}")
        return value
    raise TypeError(f"unsupported config field type {tp}")


def _shape(value: Any) -> str:
    """What a YAML value is, in the recipe's own words: 'a list ([1, 2])', 'a mapping ({'a': 1})'."""
    kind = {dict: "a mapping", list: "a list", tuple: "a list"}.get(type(value), type(value).__name__)
    return f"{kind} ({shown(value)})"


def _check_range(value: Any, meta: dict) -> str | None:
    vals = value if isinstance(value, list) else [value]
    for v in vals:
        if v is None:
            continue
        if meta.get("min") is not None and v < meta["min"]:
            return f"must be >= {meta['min']}, got {shown(v)}"
        if meta.get("max") is not None and v > meta["max"]:
            return f"must be <= {meta['max']}, got {shown(v)}"
        if meta.get("choices") is not None and v not in meta["choices"]:
            return f"must be one of {', '.join(meta['choices'])}, got {shown(v)}"
    return None


def build_config(cls: type, values: dict[str, Any] | None = None, source: str = "config") -> Any:
    """Instantiate cls from a mapping, reporting unknown keys, bad types and bad ranges all at once."""
    values = dict(values or {})
    known = {f.name: (f, tp) for f, tp in fields(cls)}
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        name = str(key).replace("-", "_")  # a YAML key may be a number or null
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(known)})"
            text = str(key)
            problems.append(f"unknown key '{text[:40]}{'...' if len(text) > 40 else ''}'{hint}")
            continue
        f, tp = known[name]
        try:
            value = _coerce(raw, tp)
        except ValueError as e:
            problems.append(f"{name}: {e} (type: {type_name(tp)})")
            continue
        err = _check_range(value, f.metadata)
        if err:
            problems.append(f"{name}: {err}")
            continue
        kwargs[name] = value
    if problems:
        raise ConfigError(problems, source)
    cfg = cls(**kwargs)
    check = getattr(cfg, "validate", None)
    if check is not None:
        problems = list(check())
        if problems:
            raise ConfigError(problems, source)
    return cfg


# Image sides. Every supported family's VAE downsamples by 8, so a side is a multiple of 8 (the flow families' 2x2
# patches need 16: their family says so when it sees the latents). 4096 px is 4x the largest native side of a supported
# family (1024: SDXL, SD3, FLUX) and 16x its pixels: anything larger is a typo (100000) that would otherwise run the
# machine out of memory only after the model has loaded.
MAX_SIDE = 4096


def side_problems(cfg: Any, *names: str) -> list[str]:
    """validate() problems of image-side settings (None = the model's own size): a multiple of 8, at most MAX_SIDE."""
    problems = []
    for name in names:
        v = getattr(cfg, name)
        if v is not None and v % 8:
            problems.append(f"{name}: must be a multiple of 8, got {v} (the VAE downsamples by 8): e.g. "
                            f"{max(8, v // 8 * 8)}")
        elif v is not None and v > MAX_SIDE:
            problems.append(f"{name}: {v} px is more than {MAX_SIDE} (4x the largest native size of a supported "
                            f"model, 1024); pass a size up to {MAX_SIDE}")
    return problems


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (what is written next to every output)."""
    return dataclasses.asdict(cfg)


def identity_dict(cfg: Any) -> dict[str, Any]:
    """Only the settings that change a stage's results: used to tell a resume from a different job.

    A local path is recorded resolved, so `./p.txt`, `p.txt` and `/abs/p.txt`, or `g/` and `g`, are one job."""
    paths = input_paths(cfg)
    return {f.name: str(paths[f.name]) if f.name in paths else getattr(cfg, f.name)
            for f, _ in fields(type(cfg)) if f.metadata.get("identity", True)}


def input_paths(cfg: Any) -> dict[str, Path]:
    """The path=True settings that name an existing local file or folder, by field name, resolved (symlinks too)."""
    found = {}
    for f, _ in fields(type(cfg)):
        value = getattr(cfg, f.name)
        if f.metadata.get("path") and isinstance(value, str) and value and Path(value).expanduser().exists():
            found[f.name] = Path(value).expanduser().resolve()
    return found


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from aifeedback.storage.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
