"""Random access to the rows of a table of pairs (or images): Parquet files, or a `datasets.Dataset`.

Both give `len`, `where(row)` (for error messages), `column(name)` (one light column, in order) and
`take(rows, columns)`; `aif score` reads its inputs through them, in DataLoader workers too (they pickle light).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from aifeedback.errors import DataError


class ParquetRows:
    """Random access to the rows of a list of Parquet files (one file's table is cached per process)."""

    def __init__(self, files: list[Path], label: str):
        if not files:
            raise DataError(f"{label} holds no .parquet files")
        self.files = [str(f) for f in files]
        self.label = label
        self.offsets = [0]
        for f in self.files:
            try:
                self.offsets.append(self.offsets[-1] + pq.ParquetFile(f).metadata.num_rows)
            except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for broken files
                raise DataError(f"{f} is not a readable Parquet file ({e}); remove or replace it") from None
        self.schema = pq.read_schema(self.files[0])
        self._cache: tuple[tuple, Any] | None = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self):  # DataLoader workers get the file list, not a cached table
        return dict(self.__dict__, _cache=None)

    def where(self, row: int) -> str:
        """'FILE row N' of a global row index, for error messages."""
        f = bisect.bisect_right(self.offsets, row) - 1
        return f"{self.files[f]} row {row - self.offsets[f]}"

    def column(self, name: str) -> list:
        """One light column of every row, in order."""
        return [v for f in self.files for v in pq.read_table(f, columns=[name]).column(name).to_pylist()]

    def take(self, rows: list[int], columns: list[str]) -> list[dict[str, Any]]:
        """The given rows (global indices), restricted to `columns`."""
        out: list[dict[str, Any]] = []
        for row in rows:
            f = bisect.bisect_right(self.offsets, row) - 1
            key = (f, tuple(columns))
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, pq.read_table(self.files[f], columns=columns, memory_map=True))
            table = self._cache[1]
            out.append({c: table.column(c)[row - self.offsets[f]].as_py() for c in columns})
        return out


class HubRows:
    """Random access to a `datasets.Dataset` (hub id or anything `load_dataset` reads)."""

    def __init__(self, ds, label: str):
        for c in ("jpg_0", "jpg_1"):  # keep image bytes as bytes, never decode them here
            if c in ds.features and isinstance(ds.features[c], datasets.Image):
                ds = ds.cast_column(c, datasets.Image(decode=False))
        self.ds = ds
        self.label = label
        self.schema = ds.features.arrow_schema

    def __len__(self) -> int:
        return len(self.ds)

    def where(self, row: int) -> str:
        return f"{self.label} row {row}"

    def column(self, name: str) -> list:
        return list(self.ds[name])

    def take(self, rows: list[int], columns: list[str]) -> list[dict[str, Any]]:
        batch = self.ds.select_columns(columns)[list(rows)]
        out = [{c: batch[c][i] for c in columns} for i in range(len(rows))]
        for r in out:
            for c in ("jpg_0", "jpg_1"):
                if isinstance(r.get(c), dict):
                    r[c] = r[c].get("bytes")
        return out
