"""Random access to the rows of a table of pairs (or images): local Parquet/Arrow files read in place (as they are,
or another layout's seen in the canonical columns: `MappedRows`), or a `datasets.Dataset`.

All give `len`, `where(row)` (for error messages), `column(name)` (one light column, in order) and
`take(rows, columns)`; `aif score` reads its inputs through them, and `aif train` its pairs (`rows[i]`), in
DataLoader workers too (they pickle light).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from aifeedback.data.mapping import canonical_cell, image_cell, mapped_names, row_labels, source_columns
from aifeedback.errors import DataError


class ParquetRows:
    """Random access to local Parquet (or `datasets` Arrow) files, read in place: nothing is copied into a cache.

    A Parquet file is read one row group at a time, memory-mapped (the group holding the asked row is kept until
    another is needed, so reading in file order decodes each group once); an Arrow file (the `datasets` cache
    format) is memory-mapped whole, which is zero-copy. Open files are kept per process (a bounded number), never
    pickled: DataLoader workers get the file list and open their own.
    """

    OPEN_FILES = 64  # Parquet footers kept parsed per process (Pick-a-Pic v2 has ~650 files)

    def __init__(self, files: list[Path], label: str, columns: list[str] | None = None):
        if not files:
            raise DataError(f"{label} holds no .parquet files")
        self.files = [str(f) for f in files]
        self.label = label
        self._files: dict[int, Any] = {}  # open ParquetFiles / memory-mapped Arrow tables, by file index
        self._cache: tuple[tuple, Any] | None = None  # ((file, row group, columns), that group's table)
        self.offsets = [0]  # first global row of each file
        self.groups: list[list[int]] = []  # per file: the first file row of each row group (Arrow: one group)
        for f in self.files:
            starts = self._group_starts(f)
            self.groups.append(starts[:-1])
            self.offsets.append(self.offsets[-1] + starts[-1])
        self.schema = self._open(0).schema_arrow if self.files[0].endswith(".parquet") else self._arrow(0).schema
        self.read_columns = columns  # what `self[row]` returns (None: every column)

    @staticmethod
    def _group_starts(f: str) -> list[int]:
        """[0, end of row group 0, ...]: the row group boundaries of a file, from its footer only."""
        try:
            if f.endswith(".arrow"):
                with pa.memory_map(f) as m:
                    return [0, sum(b.num_rows for b in pa.ipc.open_stream(m))]
            meta = pq.ParquetFile(f).metadata
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for broken files
            raise DataError(f"{f} is not a readable {'Arrow' if f.endswith('.arrow') else 'Parquet'} file ({e}); "
                            "remove or replace it") from None
        starts = [0]
        for g in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(g).num_rows)
        return starts

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self):  # DataLoader workers get the file list, not open files or a cached table
        return dict(self.__dict__, _cache=None, _files={})

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def where(self, row: int) -> str:
        """'FILE row N' of a global row index, for error messages."""
        f = bisect.bisect_right(self.offsets, row) - 1
        return f"{self.files[f]} row {row - self.offsets[f]}"

    def column(self, name: str) -> list:
        """One light column of every row, in order (read from that column's chunks only)."""
        out: list = []
        for i, f in enumerate(self.files):
            table = self._arrow(i) if f.endswith(".arrow") else pq.read_table(f, columns=[name], memory_map=True)
            out += table.column(name).to_pylist()
        return out

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.take([row], self.read_columns or self.column_names)[0]

    def take(self, rows: list[int], columns: list[str]) -> list[dict[str, Any]]:
        """The given rows (global indices), restricted to `columns`."""
        out: list[dict[str, Any]] = []
        for row in rows:
            if not 0 <= row < len(self):
                raise IndexError(f"row {row} is outside {self.label} ({len(self)} rows)")
            f = bisect.bisect_right(self.offsets, row) - 1
            local = row - self.offsets[f]
            g = bisect.bisect_right(self.groups[f], local) - 1
            key = (f, g, tuple(columns))
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, self._read_group(f, g, columns))
            table = self._cache[1]
            out.append({c: table.column(c)[local - self.groups[f][g]].as_py() for c in columns})
        return out

    def _read_group(self, f: int, g: int, columns: list[str]) -> Any:
        if self.files[f].endswith(".arrow"):
            return self._arrow(f).select(columns)
        return self._open(f).read_row_group(g, columns=columns)

    def _open(self, f: int) -> Any:
        """The ParquetFile of file f, memory-mapped; the oldest is closed beyond OPEN_FILES."""
        if f not in self._files:
            if len(self._files) >= self.OPEN_FILES:
                del self._files[next(iter(self._files))]  # the oldest: its file closes with it
            self._files[f] = pq.ParquetFile(self.files[f], memory_map=True)
        return self._files[f]

    def _arrow(self, f: int) -> Any:
        """The table of Arrow file f, memory-mapped (zero-copy: its pages are read when touched)."""
        if f not in self._files:
            self._files[f] = pa.ipc.open_stream(pa.memory_map(self.files[f])).read_all()
        return self._files[f]


class HubRows:
    """Random access to a `datasets.Dataset` (hub id or anything `load_dataset` reads), its cells canonical
    (`canonical_cell`: images as stored bytes, labels as numbers) as `MappedRows` gives those of local files."""

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
        return [canonical_cell(name, v) for v in self.ds[name]]

    def take(self, rows: list[int], columns: list[str]) -> list[dict[str, Any]]:
        batch = self.ds.select_columns(columns)[list(rows)]
        return [{c: canonical_cell(c, batch[c][i]) for c in columns} for i in range(len(rows))]


def read_columns(table: Any, names: list[str]) -> dict[str, list]:
    """Whole light columns (labels, shapes) of local rows or a `datasets.Dataset`, without touching the others."""
    if isinstance(table, (ParquetRows, HubRows, MappedRows)):
        return {n: table.column(n) for n in names}
    return table.select_columns(names).to_dict()


class MappedRows:
    """Local files in another layout (TRL, --columns) seen in the canonical columns, read in place: a view over
    `ParquetRows` that maps each row when it is taken. Label columns are made from their source columns only (never
    an image); an image is read (a path: inside `root` only) when its row is taken, and decoded by its consumer."""

    def __init__(self, rows: ParquetRows, mapping: dict[str, str], root: Path, first_wins: bool,
                 columns: list[str] | None = None):
        self.rows, self.mapping, self.root, self.first_wins = rows, mapping, root, first_wins
        self.label = rows.label
        self.read_columns = columns  # what `self[row]` returns (None: every column)
        canonical = {"caption": pa.string(), "jpg_0": pa.binary(), "jpg_1": pa.binary(), "label_0": pa.float64(),
                     "label_1": pa.float64()}
        names = mapped_names(rows.column_names, mapping, first_wins)
        self.schema = pa.schema([(c, canonical[c]) if c in canonical else rows.schema.field(c) for c in names])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def where(self, row: int) -> str:
        return self.rows.where(row)

    def column(self, name: str) -> list:
        """One column of every row, in order, read from its source columns only."""
        sources = source_columns(name, self.mapping, self.first_wins)
        values = {s: self.rows.column(s) for s in sources}
        return [self._cell(name, {s: values[s][i] for s in sources}, i) for i in range(len(self))]

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.take([row], self.read_columns or self.column_names)[0]

    def take(self, rows: list[int], columns: list[str]) -> list[dict[str, Any]]:
        """The given rows (global indices), restricted to `columns` (mapped)."""
        sources = list(dict.fromkeys(s for c in columns for s in source_columns(c, self.mapping, self.first_wins)))
        return [{c: self._cell(c, raw, row) for c in columns}
                for row, raw in zip(rows, self.rows.take(rows, sources), strict=True)]

    def _cell(self, name: str, raw: dict[str, Any], row: int) -> Any:
        """Mapped column `name` of one row from its source cells `raw`."""
        if name in ("label_0", "label_1"):
            return row_labels(self.mapping, raw, self.first_wins)[name == "label_1"]
        key = {"caption": "caption", "jpg_0": "image_0", "jpg_1": "image_1"}.get(name)
        if key is None:
            return raw[name]
        value = raw[self.mapping[key]]
        if key == "caption":
            return value
        return image_cell(value, self.root, lambda: f"{self.where(row)} ({self.mapping[key]})")
