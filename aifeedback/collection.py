"""The garbage collector in an aif process. Importing torch, diffusers and transformers (and loading a pipeline)
leaves a few million objects alive for the whole process, and Python's full collections walk every one of them:
nine of them while a stage imports its libraries (about 1 s on the CPU) and the ones the interpreter runs while it
exits (about 1.1 s): bench/RESULTS.md, "flow_grpo".

- `uncollected()`: a block (a stage's imports: `Stage.run` of the outermost stage) run without collections, whose
  objects are then frozen (`gc.freeze`): later collections skip them. The garbage of before the block is collected
  first (cheap at the start of a process), so only what is alive is frozen; modules live until the process ends
  anyway, and the few cycles that become garbage inside the block stay in memory.
- `skip_exit_collection()`: the process exits without its final collections.
"""

from __future__ import annotations

import atexit
import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def uncollected() -> Iterator[None]:
    """Collect, run the block with the collector paused, then freeze every object alive (the collector is left as it
    was: paused if it was)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def skip_exit_collection() -> None:
    """Let the process exit without the garbage collections the interpreter runs while it tears its modules down:
    `gc.freeze()` as an exit handler, so they skip every object alive by then, for memory the OS takes back anyway.
    Exit handlers still all run (trackers, logging, temporary folders, worker processes), in any order around this
    one; only objects in reference cycles still alive at exit lose their finalizers, which the interpreter does not
    promise to run at exit either, and aif closes its files itself."""
    atexit.register(gc.freeze)
