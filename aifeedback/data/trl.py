"""TRL's preference convention (`prompt`, `chosen`, `rejected`, here two images) mapped to the canonical pair columns:
caption=prompt, jpg_0=chosen, jpg_1=rejected, label_0=1, label_1=0 (as a --columns mapping whose image_0 always
wins: aifeedback.data.mapping; local files are read in place by aifeedback.data.rows.MappedRows).

An image cell may hold bytes, a `datasets` Image feature ({'bytes', 'path'}) or a file path. Paths are resolved
inside the dataset folder and never outside it (a dataset from elsewhere must not make us read /etc or ~/.ssh);
an escaping or unreadable path is refused naming the file and row, before any step runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifeedback.errors import DataError

TRL_COLUMNS = ("prompt", "chosen", "rejected")
TRL_MAPPING = {"caption": "prompt", "image_0": "chosen", "image_1": "rejected"}  # as --columns; chosen always wins


def image_bytes(value: Any, root: Path, where: Any) -> bytes | None:
    """The encoded image of one cell: bytes as they are, an Image feature's bytes (else its path), a path's file.
    None stays None (a missing image: consumers count it as unreadable, as for Pick-a-Pic). `where()` names the cell."""
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if value is None or isinstance(value, (bytes, bytearray, memoryview)):
        return None if value is None else bytes(value)
    if not isinstance(value, str):
        raise DataError(f"{where()} is a {type(value).__name__}; a TRL image column holds image bytes, a `datasets` "
                        "Image or a file path relative to the dataset folder")
    file = inside_path(value, root, where)
    try:
        return file.read_bytes()
    except OSError as e:
        raise unreadable(value, root, where, e.strerror or str(e)) from None


def check_path(value: Any, root: Path, where: Any) -> None:
    """An image path cell names a file inside `root` (light: nothing is read), so a bad path is refused when the
    table is opened, before any step runs; other cells (bytes, None) pass."""
    if isinstance(value, str) and not inside_path(value, root, where).is_file():
        raise unreadable(value, root, where, "no such file")


def unreadable(value: str, root: Path, where: Any, why: str) -> DataError:
    return DataError(f"{where()}: cannot read the image path '{value}' ({why}) under {root}. "
                     "Fix: paths are relative to the dataset folder; check the file is there")


def inside_path(value: str, root: Path, where: Any) -> Path:
    """The file an image path names, resolved inside `root`; a path leading outside it is refused (`where()` names
    the cell)."""
    inside = root.resolve()
    file = (inside / value).resolve()  # resolve() follows symlinks: a link pointing out is refused too
    if not file.is_relative_to(inside):
        raise DataError(f"{where()}: the image path '{value}' lies outside the dataset folder {root}; image paths "
                        "are read only inside it. Fix: copy the image into the folder and give its relative path")
    return file
