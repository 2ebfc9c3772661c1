"""The one way aifeedback reads a torch.save file (.pt, .bin): torch's restricted `weights_only` unpickler, which
builds only tensors and plain data, so a file cannot run code when it is read. A refused or damaged file is one
line naming it and saying what to do (torch's own message would advise loading it with weights_only=False)."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from aifeedback.errors import AifError, first_line


class RefusedFileError(AifError):
    """A torch.save file that holds more than tensors and plain data, or is damaged."""


def load_torch_file(path: str | Path, fix: str, data: bytes | None = None, safe_globals: Any = ()) -> Any:
    """torch.load(path, weights_only=True) on the CPU (data: the file's bytes, read already); safe_globals: more
    classes to allow (accelerate's numpy types)."""
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"a Python object ({found.group(1)})" if found else "Python objects"
        why = f"it holds {what} beyond tensors and plain data, and reading it could run code"
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = f"it is damaged or not a torch file ({first_line(e)[:200]})"
    raise RefusedFileError(f"{path}: refused: {why}. Fix: {fix}")
