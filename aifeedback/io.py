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
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from aifeedback.errors import AifError, DataError

MANIFEST = "manifest.json"
SHARD_DIR = "data"


class OutputConflictError(AifError):
    """The output directory holds a different job's results."""


def file_mode() -> int:
    """The mode open() gives a new file under the process's current umask (0o644 under umask 022)."""
    try:  # Linux reports the umask without changing it (os.umask would, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)  # briefly the strictest mask: a file another thread creates meanwhile stays private
    os.umask(umask)
    return 0o666 & ~umask


def publish_modes(folder: str | Path) -> None:
    """Give every file under folder the mode open() would, before the folder is renamed into place.

    safetensors' save_file (so every save_pretrained) writes through a 0600 temporary file, which would leave
    exported weights and checkpoints unreadable to colleagues on a shared machine.
    """
    mode = file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write data to path via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write obj as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the outputs."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("aifeedback", "torch", "diffusers", "transformers", "open_clip_torch", "datasets", "accelerate", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------------------------
# Shards

def shard_path(out_dir: str | Path, index: int) -> Path:
    """Final path of shard `index`."""
    return Path(out_dir) / SHARD_DIR / f"train-{index:05d}.parquet"


def shard_done(out_dir: str | Path, index: int) -> bool:
    """Whether shard `index` was completely written."""
    return shard_path(out_dir, index).exists()


def write_shard(out_dir: str | Path, index: int, rows: list[dict[str, Any]], schema=None) -> Path:
    """Write rows as shard `index` atomically (temporary name, fsync, rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = shard_path(out_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def shard_files(out_dir: str | Path) -> list[Path]:
    """The complete shards of an output directory, in order."""
    return sorted((Path(out_dir) / SHARD_DIR).glob("train-*.parquet"))


def read_rows(out_dir: str | Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows of an output directory's shards (small outputs; large ones should iterate shards)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for p in shard_files(out_dir):
        rows.extend(pq.read_table(p, columns=columns).to_pylist())
    return rows


def chunks(items: list, size: int) -> list[list]:
    """Split items into consecutive chunks of `size` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def my_shards(n_shards: int, rank: int, world: int) -> Iterable[int]:
    """Shard indices this process handles: round-robin, so processes never overlap."""
    return range(rank, n_shards, world)


# ---------------------------------------------------------------------------------------------------------------
# Manifests

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
    key = fingerprint({"stage": stage, "identity": identity, "inputs": inputs or {}})
    mpath = out / MANIFEST
    if mpath.exists():
        try:
            old = read_json(mpath)
        except (OSError, ValueError) as e:
            raise OutputConflictError(f"{mpath} is unreadable ({e}); remove it or pass --overwrite") from None
        if old.get("stage") != stage or old.get("fingerprint") != key:
            if not overwrite:
                diff = _diff(old.get("identity", {}), identity)
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
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputConflictError(
            f"{out} exists and is not an aifeedback {stage} output. Use another --out, or pass --overwrite."
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


def finish_output(out_dir: str | Path, manifest: dict[str, Any], **counts: Any) -> dict[str, Any]:
    """Mark an output complete and record its counts."""
    manifest = dict(manifest, complete=True, counts=counts)
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | Path, stage: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read an output directory's manifest, checking which stage wrote it."""
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        raise DataError(f"{path} has no {MANIFEST}: it is not an aifeedback output directory (run the stage that makes it first)")
    manifest = read_json(mpath)
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and manifest.get("stage") not in stages:
        raise DataError(f"{path} holds a '{manifest.get('stage')}' output; expected a {' or '.join(stages)} output")
    return manifest


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:6])


# ---------------------------------------------------------------------------------------------------------------
# Latents travel between stages as raw float16 bytes plus a shape column, in the UNet's space (already multiplied
# by the VAE scaling factor), so training can skip the VAE encoder.

def latent_to_bytes(latent) -> tuple[bytes, list[int]]:
    """A (C, H, W) latent tensor -> (float16 bytes, shape)."""
    t = latent.detach().to("cpu").float().half().contiguous()
    return t.numpy().tobytes(), list(t.shape)


def bytes_to_latent(data: bytes, shape: list[int]):
    """Inverse of latent_to_bytes: a float32 tensor of `shape`."""
    import numpy as np
    import torch

    arr = np.frombuffer(data, dtype=np.float16).reshape(shape)
    return torch.from_numpy(arr.astype(np.float32))


def decode_image(value: Any) -> Any:
    """Image bytes (or a datasets {'bytes': ...} dict, or a PIL image) -> a loaded RGB PIL image.

    Raises ValueError with a short reason that is the same on every run when the value is not a readable image.
    """
    from io import BytesIO

    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if value is None:
        raise ValueError("image is null")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"image is a {type(value).__name__}, expected bytes")
    if not len(value):
        raise ValueError("image is empty (0 bytes)")
    try:
        im = Image.open(BytesIO(value))
        im.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        reason = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>", "", str(e))  # drop object reprs ("<_io.BytesIO object at 0x...>")
        raise ValueError(f"cannot decode image: {type(e).__name__}: {reason}") from None
    return im if im.mode == "RGB" else im.convert("RGB")
