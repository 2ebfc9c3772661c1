"""The model cache: build a model folder once (under a lock, atomically) and reuse it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from aifeedback.storage.publish import publishing

# Bump when a builder changes, so stale caches are rebuilt instead of silently reused.
ZOO_VERSION = "1"


def cache_dir() -> Path:
    """Root of aifeedback's cache: $AIF_CACHE, else $XDG_CACHE_HOME/aifeedback, else ~/.cache/aifeedback."""
    if os.environ.get("AIF_CACHE"):
        return Path(os.environ["AIF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aifeedback"


def cached_build(name: str, build: Callable[[Path], None], version: str = ZOO_VERSION) -> Path:
    """Build a model folder once into the cache (under a lock, atomically) and return its path.

    The folder is NAME-vVERSION: a new version of one builder is built afresh, leaving every other cached model."""
    from filelock import FileLock

    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-v{version}"
    if (final / ".complete").exists():
        return final
    with FileLock(str(root / f".{name}.lock")):
        if (final / ".complete").exists():  # another process built it while we waited
            return final
        with publishing(final, folder=True, replace=True) as tmp:  # replaces an incomplete folder, if any
            _build_outside_process_group(build, tmp)
            (tmp / ".complete").write_text("ok\n")
    return final


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
