"""One writer per output folder: a stage holds an exclusive OS lock on its --out for the whole run.

Two runs writing one folder interleave their shards, checkpoints and metrics.jsonl and corrupt each other, so the
second is refused before it writes anything. The lock is `fcntl.flock` (through `filelock`) on a hidden file next to
the folder, `.NAME.lock`: next to it rather than inside, because a stage may replace the whole folder (export
publishes it at once). The kernel releases the lock when the holder exits in any way, SIGKILL included, so a killed
run never blocks its rerun (its lock file stays, unlocked, until a run ends normally and removes it). The holder
writes its pid and host into the file, for the refusal to name. Light: imports no torch.

Under `accelerate launch` the processes of one run share its output: only the main process takes the lock (the
others wait for it at their first barrier, and torchrun stops them when it is refused).
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from aifeedback.console import note
from aifeedback.errors import AifError

# Where launchers put a process's global rank: torchrun (accelerate launch --multi_gpu), then the MPI launchers.
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")


class OutputBusyError(AifError):
    """Another run is writing the same output folder."""


def lock_path(out: str | Path) -> Path:
    """The lock file of output folder `out`: the hidden sibling .NAME.lock (of the real path: a symlink or `..` in
    --out names the same lock as the plain path)."""
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name or 'root'}.lock"


def is_main_process() -> bool:
    """Whether this is the main process of its run (rank 0, or not launched as one of several processes)."""
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip() == "0"
    return True


@contextmanager
def output_lock(out: str | Path, option: str = "--out") -> Iterator[None]:
    """Hold the exclusive lock on output folder `out` (on the main process only), or raise OutputBusyError naming
    the holder. Creates the folder's parent if needed, nothing else."""
    if not is_main_process():
        yield
        return
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # no soft fallback: a marker file is not released by the kernel, and a killed run's marker would block its rerun
    lock = FileLock(path, timeout=0, fallback_to_soft=False, thread_local=False, on_acquired=_write_holder)
    try:
        lock.acquire()
    except Timeout:
        raise OutputBusyError(
            f"{option} {out} is being written by another run ({_holder(path)}): two runs writing one folder would "
            f"corrupt it. Fix: wait for that run to finish or stop it, or choose another {option}.") from None
    except OSError as e:  # a file system without flock (some network mounts): the run still works, unguarded
        note(f"warning: cannot lock {path} ({e.strerror or e}), so another run into {option} {out} would not be "
             f"refused; make sure none runs.")
        yield
        return
    try:
        yield
    finally:
        # removed while still held: a run that opened this file meanwhile and then gets its lock sees it removed,
        # which filelock does not count as acquired (checked: 3 processes x 3000 rounds, never two holders)
        path.unlink(missing_ok=True)
        lock.release()


def _write_holder(fd: int) -> None:
    """Record who holds the lock, in the locked file itself."""
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
             .encode())


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return f"{text}; lock file {path}" if text else f"lock file {path}"
