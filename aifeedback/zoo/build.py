"""`python -m aifeedback.zoo.build MODULE:FUNCTION OUT`: run one model builder into OUT, in a fresh interpreter.

zoo/cache.py builds here when its caller is a process of a torch.distributed group (see
`_build_outside_process_group`). The process ends if its parent does, so a killed run leaves no builder behind."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def main(argv: list[str]) -> None:
    from aifeedback.zoo.cache import resolve_builder

    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    ref, out = argv
    resolve_builder(ref)(Path(out))


if __name__ == "__main__":
    main(sys.argv[1:])
