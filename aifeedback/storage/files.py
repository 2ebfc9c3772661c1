"""Files that never end up half-written: atomic writes of bytes, text and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aifeedback.storage.publish import publishing


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write data to path, replacing it atomically (see storage.publish)."""
    with publishing(path, replace=True) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write obj as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
