"""The model cache: build a model folder once (under a lock, atomically) and reuse it."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Union

from aifeedback.errors import AifError
from aifeedback.storage.files import write_json
from aifeedback.storage.publish import publishing

# Bump when a builder changes, so stale caches are rebuilt instead of silently reused.
ZOO_VERSION = "1"
COMPLETE = ".complete"  # written last into a build: {"files": {relative path: size in bytes}}
TIMEOUT_VAR = "AIF_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT = 1800.0  # the toy models pretrain for minutes on a slow CPU; the tiny ones take seconds
# torchrun's variables: a fresh builder process without them is a plain single process
_GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
              "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")

Builder = Union[Callable[[Path], None], str]  # build(out), or its "module:function" name


def cache_dir() -> Path:
    """Root of aifeedback's cache: $AIF_CACHE, else $XDG_CACHE_HOME/aifeedback, else ~/.cache/aifeedback."""
    if os.environ.get("AIF_CACHE"):
        return Path(os.environ["AIF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aifeedback"


def cached_build(name: str, build: Builder, version: str = ZOO_VERSION) -> Path:
    """Build a model folder once into the cache (under a lock, atomically) and return its path.

    `build` is a module-level function `build(out)` or its "module:function" name. The folder is NAME-vVERSION: a
    new version of one builder is built afresh, leaving every other cached model. A cached folder whose files no
    longer have the sizes recorded at build time (a truncated or deleted file, from a full disk, an interrupted copy
    of the cache or a manual edit) is rebuilt: the builds are deterministic. Neither waiting for another process's
    build nor a build in a fresh process (see `_build_outside_process_group`) lasts longer than AIF_BUILD_TIMEOUT."""
    from filelock import FileLock, Timeout

    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-v{version}"
    if intact(final):
        return final
    timeout = build_timeout()
    lock = root / f".{name}.lock"
    try:
        with FileLock(str(lock), timeout=timeout):
            if intact(final):  # another process built it while we waited
                return final
            elsewhere = f"set AIF_CACHE to a folder on another disk (the model cache is {cache_dir()})"
            with publishing(final, folder=True, replace=True, elsewhere=elsewhere) as tmp:  # replaces a damaged one
                _build_outside_process_group(name, build, tmp, timeout)
                write_json(tmp / COMPLETE, {"files": _file_sizes(tmp)})
    except Timeout:
        raise AifError(f"waited {timeout:g} s ({TIMEOUT_VAR}) for another process to finish building the offline "
                       f"model {name} (it holds {lock}): end that process if it is stuck (`lsof {lock}` names it), "
                       f"or set {TIMEOUT_VAR} to more seconds if builds are that slow here") from None
    return final


def build_timeout() -> float:
    """Seconds a model build, or the wait for another process's build, may last: $AIF_BUILD_TIMEOUT, else 1800."""
    text = os.environ.get(TIMEOUT_VAR, "").strip()
    if not text:
        return DEFAULT_BUILD_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise AifError(f"{TIMEOUT_VAR}={text[:40]!r} is not a number of seconds above 0: set it to one (e.g. "
                       f"{DEFAULT_BUILD_TIMEOUT:g}) or unset it")
    return seconds


def resolve_builder(build: Builder) -> Callable[[Path], None]:
    """The builder function a "module:function" name stands for (a function is returned as it is)."""
    if callable(build):
        return build
    module, _, function = build.partition(":")
    return getattr(importlib.import_module(module), function)


def builder_name(build: Builder) -> str | None:
    """The "module:function" name of a builder, if a fresh interpreter can import it by that name."""
    if isinstance(build, str):
        return build
    module, qualname = getattr(build, "__module__", None), getattr(build, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname or "." in qualname:  # lambda, local or bound
        return None
    return f"{module}:{qualname}"


def intact(folder: Path) -> bool:
    """Whether folder holds a complete build whose files all still have their recorded sizes (a stat per file)."""
    try:
        text = (folder / COMPLETE).read_text()
    except OSError:
        return False
    if text.strip() == "ok":  # a build from before sizes were recorded: record them, if its weights look whole
        return _upgrade_marker(folder)
    try:
        recorded = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(recorded, dict) and all(_size(folder / rel) == size for rel, size in recorded.items())


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != COMPLETE}


def _upgrade_marker(folder: Path) -> bool:
    """Record the sizes of an older build if each safetensors file is as long as its header says (what a truncation
    breaks); a rewrite of the marker is atomic, so processes upgrading at once do no harm."""
    if not all(_safetensors_whole(p) for p in folder.rglob("*.safetensors")):
        return False
    try:
        write_json(folder / COMPLETE, {"files": _file_sizes(folder)})
    except (OSError, AifError):  # a read-only shared cache stays usable as it is
        pass
    return True


def _safetensors_whole(path: Path) -> bool:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes up to the last offset."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _build_outside_process_group(name: str, build: Builder, out: Path, timeout: float) -> None:
    """Run build(out) here, or in a fresh interpreter when this process is in a torch.distributed group.

    transformers' save_pretrained writes nothing on a non-zero rank of an initialised process group, so a model
    built there (whichever process of `accelerate launch` wins the lock builds) would be saved without its weights.
    The fresh interpreter runs `python -m aifeedback.zoo.build` (not multiprocessing's spawn, which re-runs the
    caller's `__main__`: an unguarded launcher script would start the stage again and join the group), outside the
    group's environment, and is stopped after `timeout` seconds.
    """
    import subprocess
    import sys

    if not _in_process_group():
        import torch

        with torch.random.fork_rng(devices=[]):  # the builds seed torch: leave the caller's RNG as it was
            resolve_builder(build)(out)
        return
    ref = builder_name(build)
    if ref is None:
        raise AifError(f"the builder of the offline model {name} ({build!r}) is not a module-level function, so it "
                       "cannot be built in a fresh process: build it once in a single process (without "
                       "`accelerate launch`), or pass a module-level function")
    env = {k: v for k, v in os.environ.items() if k not in _GROUP_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)  # the builder imports as here
    try:
        code = subprocess.run([sys.executable, "-m", "aifeedback.zoo.build", ref, str(out)], env=env,
                              timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        raise AifError(f"building the offline model {name} took longer than {timeout:g} s ({TIMEOUT_VAR}) and was "
                       f"stopped: set {TIMEOUT_VAR} to more seconds if builds are that slow here, or build it once "
                       "in a single process (any aif command that loads it, without `accelerate launch`)") from None
    if code != 0:
        raise AifError(f"building the offline model {name} in a fresh process failed (exit code {code}); its error "
                       "is printed above")


def _in_process_group() -> bool:
    import sys

    dist = sys.modules.get("torch.distributed")  # not imported: no group
    return dist is not None and dist.is_available() and dist.is_initialized()
