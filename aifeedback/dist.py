"""This process's place among the processes that `accelerate launch` (or torchrun) started."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType


def process_state() -> Any:
    """accelerate's PartialState: rank, world size, this rank's device.

    On a host without a GPU, `accelerate launch --multi_gpu` still starts N processes, but a plain PartialState()
    would see each of them as a lone process 0 (so all would do all the work); asking for CPU makes them join one
    gloo group instead. PartialState is a process-wide singleton, so every stage in a process gets the same one.
    """

    return PartialState(cpu=not torch.cuda.is_available())


def sharded(accelerator) -> bool:
    """Whether the prepared model's parameters are sharded across processes (FSDP, DeepSpeed): then its state dict
    is gathered collectively, and every process must take part in each of its forwards."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def worker_context(workers: int) -> Any:
    """The multiprocessing context of DataLoader worker processes: fork where the OS makes it the safe choice
    (Linux), whatever Python's default. spawn (macOS) and forkserver (Linux's default from Python 3.14) import the
    caller's `__main__` in each worker, so a launcher script without an `if __name__ == "__main__":` guard would
    start the whole stage again there. None (the default) with no workers, which DataLoader requires, and elsewhere
    (fork is unsafe on macOS)."""
    import multiprocessing
    import sys

    return multiprocessing.get_context("fork") if workers and sys.platform.startswith("linux") else None
