"""Files that never end up half-written: atomic writes, Parquet shards, and manifest.json bookkeeping.

Every stage writes into its own output directory:
  manifest.json      stage, schema version, package versions, resolved config, counts (written by rank 0)
  config.yaml        the resolved config
  data/train-NNNNN.parquet  shards; a shard is written under a temporary name and renamed when complete, so a
                     killed run leaves only whole shards and a rerun skips them. The "train" prefix makes
                     `datasets.load_dataset("parquet", data_dir=DIR)` read only the shards (as its "train"
                     split), not manifest.json and config.yaml.
Shard i always holds the same work items (a pure function of the config), so the output does not depend on how
many processes ran it or how often it was interrupted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from aifeedback.config import shown
from aifeedback.errors import AifError, DataError, first_line
from aifeedback.storage.files import read_json, write_json
from aifeedback.storage.shards import shard_files

MANIFEST = "manifest.json"


class OutputConflictError(AifError):
    """The output directory holds a different job's results."""


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the outputs."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("aifeedback", "torch", "diffusers", "transformers", "open_clip_torch", "datasets", "accelerate",
                 "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def prepare_output(
    out_dir: str | Path,
    stage: str,
    config: dict[str, Any],
    identity: dict[str, Any],
    overwrite: bool = False,
    inputs: dict[str, Any] | None = None,
    is_main: bool = True,
) -> dict[str, Any]:
    """Create or reopen a stage's output directory.

    A directory holding the same job (same stage and identity settings) is resumed; a different job is refused
    unless overwrite=True, in which case its shards are removed first. Only the main process writes.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputConflictError(f"{out} is a file, not a folder. Fix: choose another --out (a folder path).")
    key = fingerprint({"stage": stage, "identity": identity, "inputs": inputs or {}})
    mpath = out / MANIFEST
    if mpath.exists():
        try:
            old = read_json(mpath)
        except (OSError, ValueError) as e:
            raise OutputConflictError(f"{mpath} is unreadable ({e}); remove it or pass --overwrite") from None
        if old.get("stage") != stage or old.get("fingerprint") != key:
            if not overwrite:
                diff = job_changes(old, identity, inputs or {})
                what = f"a '{old.get('stage')}' output" if old.get("stage") != stage else "a different job"
                raise OutputConflictError(
                    f"{out} already holds {what}"
                    + (f" (differs in: {diff})" if diff else "")
                    + ". Use another --out, or pass --overwrite to replace it."
                )
            if is_main:
                for p in shard_files(out):
                    p.unlink()
        else:
            return old
    elif out.exists() and any(out.iterdir()):  # --overwrite too: it replaces only what aifeedback wrote
        raise OutputConflictError(
            f"{out} exists, is not empty and is not an aifeedback output (it has no {MANIFEST}), so --overwrite does "
            f"not replace it either. Fix: use another --out, or empty that folder yourself."
        )
    manifest = {
        "stage": stage,
        "schema_version": 1,
        "fingerprint": key,
        "identity": identity,
        "inputs": inputs or {},
        "config": config,
        "versions": package_versions(),
        "complete": False,
    }
    if is_main:
        write_json(mpath, manifest)
    return manifest


def check_replaceable(out_dir: str | Path) -> None:
    """Refuse to delete anything in a non-empty folder that holds no aifeedback manifest (call it before a stage's
    --overwrite removes files): --overwrite replaces aifeedback's own outputs, never a folder someone else wrote."""
    out = Path(out_dir)
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        ours = isinstance(read_json(out / MANIFEST).get("stage"), str)
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise OutputConflictError(
            f"{out} is not empty and is not an aifeedback output (it has no readable {MANIFEST}), so --overwrite "
            f"deletes nothing there. Fix: use another --out, or empty that folder yourself.")


def prepare_output_synced(state: Any, out_dir: str | Path, stage: str, config: dict[str, Any],
                          identity: dict[str, Any], overwrite: bool = False,
                          inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """prepare_output for every process of a run (`state` is accelerate's PartialState).

    The main process checks and writes first; the others read its manifest after a barrier. Checking at the same
    time would race: another process could see the directory half-prepared and refuse it as a foreign one.
    """
    if state.is_main_process:
        prepare_output(out_dir, stage, config, identity, overwrite, inputs, is_main=True)
    state.wait_for_everyone()
    return read_json(Path(out_dir) / MANIFEST)


def completed_output(out_dir: str | Path, stage: str, identity: dict[str, Any],
                     inputs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of out_dir when it holds this very job (same stage, identity and inputs) and it finished, else
    None. A rerun of a finished job checks this first, so it has nothing to do and loads no model."""
    mpath = Path(out_dir) / MANIFEST
    try:
        old = read_json(mpath) if mpath.is_file() else {}
    except (OSError, ValueError):
        return None  # unreadable: prepare_output reports it
    key = fingerprint({"stage": stage, "identity": identity, "inputs": inputs or {}})
    return old if old.get("complete") and old.get("fingerprint") == key else None


def finish_output(out_dir: str | Path, manifest: dict[str, Any], **counts: Any) -> dict[str, Any]:
    """Mark an output complete and record its counts."""
    manifest = dict(manifest, complete=True, counts=counts)
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | Path, stage: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read an output directory's manifest, checking which stage wrote it."""
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        raise DataError(f"{path} has no {MANIFEST}: it is not an aifeedback output directory "
                        "(run the stage that makes it first)")
    try:
        manifest = read_json(mpath)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise DataError(f"{mpath}: unreadable ({first_line(e)}): the file is damaged. Fix: rerun the stage that wrote "
                        f"{path} (with --overwrite where it asks), or use another copy of it") from None
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and manifest.get("stage") not in stages:
        raise DataError(f"{path} holds a '{manifest.get('stage')}' output; expected a {' or '.join(stages)} output")
    return manifest


def job_changes(old: dict[str, Any], identity: dict[str, Any], inputs: dict[str, Any]) -> str:
    """What differs between the job an output's manifest `old` records and this one: settings (old -> new), then
    inputs (a prompt file's contents, the input's own fingerprint or row count), so a refusal says what to undo."""
    changes = [f"{k}: {shown(a)} -> {shown(b)}" for k, a, b in _changed(old.get("identity", {}), identity)]
    changes += [f"input {k}: {shown(a)} -> {shown(b)}" for k, a, b in _changed(old.get("inputs", {}), inputs)]
    return ", ".join(changes[:6])


def _changed(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
