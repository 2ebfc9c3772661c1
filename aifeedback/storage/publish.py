"""The one way aifeedback puts an output in place: write it under a temporary sibling name, rename it when complete.

Readers (a rerun, --resume, the next stage) therefore only ever see complete files and folders; a killed writer
leaves at most a hidden temporary `.NAME….tmp` next to the final path, which no reader picks up.

- A file gets a unique temporary `.NAME.XXXXXXXX.tmp` (several processes may write the same file: the last rename
  wins) and is fsynced before the rename. `remove_stale` clears those a killed run left in a folder.
- A folder gets the fixed temporary `.NAME.tmp`: one owner publishes a folder, every process of a run can address
  it (each rank of `accelerate save_state` writes into it), and the next publish of that folder clears a killed
  run's leftover before it starts.
Both get the modes a plain open() / mkdir() gives under the umask (mkstemp and safetensors would make files 0600).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from aifeedback.errors import write_error


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


def temporary_path(final: str | Path) -> Path:
    """The fixed temporary sibling a folder is written under: DIR/.NAME.tmp."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp")


def is_temporary(path: str | Path) -> bool:
    """Whether path is a temporary of a publish (complete outputs are never hidden `.*.tmp` names)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def discard(path: str | Path) -> None:
    """Remove a file or folder tree if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_stale(folder: str | Path) -> None:
    """Remove the temporaries killed runs left in folder. Only while no publish into folder is under way."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.iterdir():
            if is_temporary(tmp):
                discard(tmp)


def publish(tmp: str | Path, final: str | Path, replace: bool = False) -> None:
    """Rename a completed temporary to final; an existing final is replaced only when `replace`, else FileExistsError.

    A file replaces a file atomically; a folder cannot be renamed over a non-empty one, so an old final folder is
    removed first (a kill in between leaves no final, and the rerun writes it again)."""
    tmp, final = Path(tmp), Path(final)
    if tmp.is_dir():
        _open_modes(tmp)
    if os.path.lexists(final):
        if not replace:
            raise FileExistsError(errno.EEXIST, "already exists; publish with replace=True to replace it", str(final))
        if tmp.is_dir() or (final.is_dir() and not final.is_symlink()):
            discard(final)
    os.replace(tmp, final)


@contextmanager
def publishing(final: str | Path, folder: bool = False, replace: bool = False,
               elsewhere: str = "choose another --out") -> Iterator[Path]:
    """Yield a temporary sibling of final to write (an empty file, or with folder=True an empty folder); when the
    block succeeds, rename it to final (see `publish` for `replace`); when it fails, remove it. A full or read-only
    disk, or a file in the way, raises an OutputWriteError naming the path and the fix (`elsewhere` says where
    else to write).

        with publishing(out / "model", folder=True, replace=True) as tmp:
            model.save_pretrained(tmp)
    """
    final = Path(final)
    if os.path.lexists(final) and not replace:  # fail before the work, not after it
        raise FileExistsError(errno.EEXIST, "already exists; publish with replace=True to replace it", str(final))
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_folder(final) if folder else _new_file(final)
        yield tmp
        if not folder:
            _seal_file(tmp)
        publish(tmp, final, replace=replace)
    except BaseException as e:
        if tmp is not None:
            discard(tmp)
        clear = write_error(e, final, elsewhere)
        if clear is not None:
            raise clear from e
        raise


def _new_folder(final: Path) -> Path:
    tmp = temporary_path(final)
    discard(tmp)  # a killed run's leftover
    tmp.mkdir()
    return tmp


def _new_file(final: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _seal_file(tmp: Path) -> None:
    """Make the written file durable before it gets its final name, with the mode open() would have given it."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, file_mode())


def _open_modes(folder: Path) -> None:
    """Give every file in a folder the mode open() would: safetensors' save_file (so every save_pretrained) writes
    0600 files, which would leave weights and checkpoints unreadable to colleagues on a shared machine."""
    mode = file_mode()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)
