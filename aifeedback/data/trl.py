"""TRL's preference convention (`prompt`, `chosen`, `rejected`, here two images) mapped to the canonical pair columns:
caption=prompt, jpg_0=chosen, jpg_1=rejected, label_0=1, label_1=0.

An image cell may hold bytes, a `datasets` Image feature ({'bytes', 'path'}) or a file path. Paths are resolved
inside the dataset folder and never outside it (a dataset from elsewhere must not make us read /etc or ~/.ssh);
an escaping or unreadable path is refused naming the file and row, before any step runs.
"""

from __future__ import annotations

import bisect
import hashlib
from pathlib import Path
from typing import Any

import datasets

from aifeedback.data.labels import LABEL_COLUMNS, PAIR_COLUMNS
from aifeedback.errors import DataError

TRL_COLUMNS = ("prompt", "chosen", "rejected")


def to_pairs(ds: Any, root: Path, files: list[Path], rows_per_file: list[int]) -> Any:
    """`ds` (the rows of `files`, in order) with TRL's columns replaced by the canonical ones, images as bytes."""
    for c in TRL_COLUMNS[1:]:  # keep stored images as {'bytes', 'path'}: never decode them here
        if isinstance(ds.features[c], datasets.Image):
            ds = ds.cast_column(c, datasets.Image(decode=False))
    offsets = [0]
    for n in rows_per_file:
        offsets.append(offsets[-1] + n)
    features = datasets.Features({c: f for c, f in ds.features.items() if c not in TRL_COLUMNS + PAIR_COLUMNS
                                  + LABEL_COLUMNS})
    features.update({"caption": datasets.Value("string"), "jpg_0": datasets.Value("binary"),
                     "jpg_1": datasets.Value("binary"), "label_0": datasets.Value("float64"),
                     "label_1": datasets.Value("float64")})
    where = {"root": str(root), "files": [str(f) for f in files], "offsets": offsets}
    replaced = [c for c in ds.column_names if c in TRL_COLUMNS + PAIR_COLUMNS + LABEL_COLUMNS]
    return ds.map(_canonical, batched=True, with_indices=True, fn_kwargs=where, features=features,
                  remove_columns=replaced, new_fingerprint=_fingerprint(ds, root), desc="TRL pairs")


def _fingerprint(ds: Any, root: Path) -> str:
    """The converted table's cache key: the files' (ds's fingerprint) and, for path columns, the size and time of
    every image file they name, so an image replaced in place is read again, never served from the cache."""
    h = hashlib.sha256(f"trl-v1 {ds._fingerprint} {root.resolve()}".encode())
    for c in TRL_COLUMNS[1:]:
        if ds.features[c] == datasets.Value("string"):  # light: the paths, not the images
            for name in ds[c]:
                st = (root / name).stat() if name is not None and (root / name).is_file() else None
                h.update(f"{name} {st and (st.st_size, st.st_mtime_ns)}".encode())
    return h.hexdigest()[:32]


def _canonical(batch: dict[str, list], indices: list[int], root: str, files: list[str], offsets: list[int]) -> dict:
    """One batch of TRL rows as canonical pairs (the chosen image is always jpg_0)."""

    def where(i: int) -> str:
        f = bisect.bisect_right(offsets, i) - 1
        return f"{files[f]} row {i - offsets[f]}"

    n = len(indices)
    out = {"caption": batch["prompt"], "label_0": [1.0] * n, "label_1": [0.0] * n}
    for column, canonical in (("chosen", "jpg_0"), ("rejected", "jpg_1")):
        out[canonical] = [image_bytes(v, Path(root), lambda i=i, c=column: f"{where(i)} ({c})")
                          for v, i in zip(batch[column], indices, strict=True)]
    return out


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
        raise DataError(f"{where()}: cannot read the image path '{value}' ({e.strerror or e}) under {root}. "
                        "Fix: paths are relative to the dataset folder; check the file is there") from None


def inside_path(value: str, root: Path, where: Any) -> Path:
    """The file an image path names, resolved inside `root`; a path leading outside it is refused (`where()` names
    the cell)."""
    inside = root.resolve()
    file = (inside / value).resolve()  # resolve() follows symlinks: a link pointing out is refused too
    if not file.is_relative_to(inside):
        raise DataError(f"{where()}: the image path '{value}' lies outside the dataset folder {root}; image paths "
                        "are read only inside it. Fix: copy the image into the folder and give its relative path")
    return file
