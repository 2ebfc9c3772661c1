"""The model cache: build a model folder once (under a lock, atomically) and reuse it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from aifeedback.errors import AifError
from aifeedback.storage.files import write_json
from aifeedback.storage.publish import publishing

# Bump when a builder changes, so stale caches are rebuilt instead of silently reused.
ZOO_VERSION = "1"
COMPLETE = ".complete"  # written last into a build: {"files": {relative path: size in bytes}}


def cache_dir() -> Path:
    """Root of aifeedback's cache: $AIF_CACHE, else $XDG_CACHE_HOME/aifeedback, else ~/.cache/aifeedback."""
    if os.environ.get("AIF_CACHE"):
        return Path(os.environ["AIF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aifeedback"


def cached_build(name: str, build: Callable[[Path], None], version: str = ZOO_VERSION) -> Path:
    """Build a model folder once into the cache (under a lock, atomically) and return its path.

    The folder is NAME-vVERSION: a new version of one builder is built afresh, leaving every other cached model.
    A cached folder whose files no longer have the sizes recorded at build time (a truncated or deleted file, from
    a full disk, an interrupted copy of the cache or a manual edit) is rebuilt: the builds are deterministic."""
    from filelock import FileLock

    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-v{version}"
    if intact(final):
        return final
    with FileLock(str(root / f".{name}.lock")):
        if intact(final):  # another process built it while we waited
            return final
        elsewhere = f"set AIF_CACHE to a folder on another disk (the model cache is {cache_dir()})"
        with publishing(final, folder=True, replace=True, elsewhere=elsewhere) as tmp:  # replaces a damaged folder
            _build_outside_process_group(build, tmp)
            write_json(tmp / COMPLETE, {"files": _file_sizes(tmp)})
    return final


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


def _build_outside_process_group(build: Callable[[Path], None], out: Path) -> None:
    """Run build(out) here, or in a fresh process when this one is in a torch.distributed group.

    transformers' save_pretrained writes nothing on a non-zero rank of an initialised process group, so a model
    built there (whichever process of `accelerate launch` wins the lock builds) would be saved without its weights.
    """
    import multiprocessing
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        import torch

        with torch.random.fork_rng(devices=[]):  # the builds seed torch: leave the caller's RNG as it was
            build(out)
        return
    proc = multiprocessing.get_context("spawn").Process(target=build, args=(out,))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"building {out.name} in a subprocess failed (exit code {proc.exitcode}); "
                           "see its output above")
