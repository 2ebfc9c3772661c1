"""This process's place among the processes that `accelerate launch` (or torchrun) started."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import PartialState


def process_state() -> Any:
    """accelerate's PartialState: rank, world size, this rank's device.

    On a host without a GPU, `accelerate launch --multi_gpu` still starts N processes, but a plain PartialState()
    would see each of them as a lone process 0 (so all would do all the work); asking for CPU makes them join one
    gloo group instead. PartialState is a process-wide singleton, so every stage in a process gets the same one.
    """

    return PartialState(cpu=not torch.cuda.is_available())
