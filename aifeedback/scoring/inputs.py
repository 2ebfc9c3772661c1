"""Inputs of `aif score`: an `aif generate` output, or preference pairs in the Pick-a-Pic layout (local Parquet or a
hub dataset), read as rows with random access (`aifeedback.scoring.loop` decodes and scores their images).
Imported by the score stage when it runs, never by the CLI at start-up.

Work is cut into *units* (one prompt's K images for a generate input, one pair for a Pick-a-Pic input) and units
into shards of a fixed size, so the output of shard i depends only on the config, never on how many processes
ran it or how often it was interrupted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifeedback.errors import DataError

GENERATE_COLUMNS = ("prompt_id", "prompt", "k", "seed", "image")
PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1")


class ParquetRows:
    """Random access to the rows of a list of Parquet files (one file's table is cached per process)."""

    def __init__(self, files: list[Path], label: str):
        import pyarrow.parquet as pq

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
        import bisect

        f = bisect.bisect_right(self.offsets, row) - 1
        return f"{self.files[f]} row {row - self.offsets[f]}"

    def column(self, name: str) -> list:
        """One light column of every row, in order."""
        import pyarrow.parquet as pq

        return [v for f in self.files for v in pq.read_table(f, columns=[name]).column(name).to_pylist()]

    def take(self, rows: list[int], columns: list[str]) -> list[dict[str, Any]]:
        """The given rows (global indices), restricted to `columns`."""
        import bisect

        import pyarrow.parquet as pq

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
        from datasets import Image

        for c in ("jpg_0", "jpg_1"):  # keep image bytes as bytes, never decode them here
            if c in ds.features and isinstance(ds.features[c], Image):
                ds = ds.cast_column(c, Image(decode=False))
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


@dataclass
class Unit:
    """One prompt's images (generate input) or one pair (Pick-a-Pic input)."""

    prompt_id: str
    prompt: str
    images: list[tuple[int, str]]  # (source row, image column)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Input:
    """What `aif score` reads: the rows, the units built from them, and the rows that were unusable."""

    kind: str  # "generate" or "pairs"
    rows: Any  # ParquetRows | HubRows
    units: list[Unit]
    bad_rows: list[dict[str, Any]]
    fingerprint: dict[str, Any]
    has_latents: bool = False
    has_labels: bool = False


def prompt_id_of(caption: str) -> str:
    """A stable id for a caption without one (Pick-a-Pic rows): a short hash of its text."""
    return "c" + hashlib.sha1(caption.encode("utf-8")).hexdigest()[:12]


def open_input(source: str, split: str | None = None, limit: int | None = None) -> Input:
    """Open `source`: an `aif generate` output dir, a local Parquet dir/file in the Pick-a-Pic layout, or a hub id."""
    path = Path(source).expanduser()
    if (path / "manifest.json").exists():
        from aifeedback.storage.files import read_json

        stage = read_json(path / "manifest.json").get("stage")
        if stage == "generate":
            return _generate_input(path, limit)
        if stage != "score":
            raise DataError(f"{path} holds an '{stage}' output; `aif score` reads a generate output or Pick-a-Pic pairs")
    if path.exists():
        files = [path] if path.is_file() else _parquet_files(path, split)
        return _pairs_input(ParquetRows(files, str(path)), limit, {"path": str(path.resolve()), "files": _stat(files)})
    if source.count("/") == 1 and not source.startswith((".", "/", "~")) and not source.endswith("/"):
        ds = _load_hub(source, split)
        label = f"{source}[{split or 'default split'}]"
        return _pairs_input(HubRows(ds, label), limit, {"hub": source, "split": split, "dataset": ds._fingerprint})
    raise DataError(
        f"--input '{source}' is neither a local path nor a hub dataset id (org/name). Pass an `aif generate` output "
        f"directory, a folder of Pick-a-Pic-layout Parquet files, or e.g. yuvalkirstain/pickapic_v2."
    )


def _stat(files: list[Path]) -> list[tuple[str, int]]:
    return [(f.name, f.stat().st_size) for f in files]


def _parquet_files(path: Path, split: str | None) -> list[Path]:
    base = path / "data" if (path / "data").is_dir() else path  # an `aif score` output keeps its pairs in data/
    files = sorted(p for p in base.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts))
    if split:
        chosen = [p for p in files if p.name.startswith(f"{split}-") or p.parent.name == split]
        if not chosen:
            raise DataError(f"{base} has no Parquet files for split '{split}' (expected {split}-*.parquet or {split}/)")
        return chosen
    return files


def _load_hub(name: str, split: str | None):
    import datasets

    try:
        if split:
            return datasets.load_dataset(name, split=split)
        dd = datasets.load_dataset(name)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"could not load the dataset '{name}'{f' split {split}' if split else ''}: {first}.\n"
            f"  Fix: check the id and --split (Pick-a-Pic v2 splits: train, validation, test, validation_unique, "
            f"test_unique; kashif/pickascore: validation), or download it and pass the local Parquet folder."
        ) from None
    if len(dd) != 1:
        raise DataError(f"dataset '{name}' has splits {', '.join(dd)}; choose one with --split")
    return next(iter(dd.values()))


def _missing(rows, needed: tuple[str, ...], what: str) -> None:
    have = set(rows.schema.names)
    missing = [c for c in needed if c not in have]
    if missing:
        raise DataError(
            f"{rows.label} lacks column(s) {', '.join(missing)} needed for {what} (it has: {', '.join(sorted(have))})."
        )


def _generate_input(path: Path, limit: int | None) -> Input:
    from aifeedback.storage.manifest import read_manifest
    from aifeedback.storage.shards import shard_files

    manifest = read_manifest(path, "generate")
    if not manifest.get("complete"):
        raise DataError(f"{path} is an unfinished `aif generate` output; rerun that generate command to complete it")
    rows = ParquetRows(shard_files(path), str(path))
    _missing(rows, GENERATE_COLUMNS, "an `aif generate` input")
    names = set(rows.schema.names)
    meta_cols = ["prompt_id", "prompt", "k", "seed"] + (["category"] if "category" in names else [])
    cols = {c: rows.column(c) for c in meta_cols}
    groups: dict[str, Unit] = {}
    bad: list[dict[str, Any]] = []
    for i in range(len(rows)):
        pid, text, k, seed = cols["prompt_id"][i], cols["prompt"][i], cols["k"][i], cols["seed"][i]
        problem = next((f"{c} is null" for c, v in (("prompt_id", pid), ("prompt", text), ("k", k), ("seed", seed)) if v is None), None)
        if problem:
            bad.append({"where": rows.where(i), "error": problem})
            continue
        unit = groups.setdefault(str(pid), Unit(str(pid), text, [], {"category": cols.get("category", [None] * len(rows))[i], "k": [], "seed": []}))
        unit.images.append((i, "image"))
        unit.meta["k"].append(int(k))
        unit.meta["seed"].append(int(seed))
    units = list(groups.values())
    for u in units:  # generation order within a prompt: by k
        order = sorted(range(len(u.images)), key=lambda t: u.meta["k"][t])
        u.images = [u.images[t] for t in order]
        u.meta["k"] = [u.meta["k"][t] for t in order]
        u.meta["seed"] = [u.meta["seed"][t] for t in order]
    units = units[:limit] if limit else units
    has_latents = "latent" in names and "latent_shape" in names
    fp = {"generate": str(path.resolve()), "fingerprint": manifest.get("fingerprint"), "rows": len(rows)}
    if has_latents:  # which latent space they live in, so training can tell whether it may use them
        fp["latents_from"] = {"model": manifest["config"].get("model"), "vae": manifest["config"].get("vae")}
    return Input("generate", rows, units, bad, fp, has_latents=has_latents)


def _pairs_input(rows, limit: int | None, fp: dict[str, Any]) -> Input:
    _missing(rows, PAIR_COLUMNS, "Pick-a-Pic-layout pairs")
    n = min(len(rows), limit) if limit else len(rows)
    captions = rows.column("caption")[:n]
    units: list[Unit] = []
    bad: list[dict[str, Any]] = []
    for i, cap in enumerate(captions):
        if cap is None:
            bad.append({"where": rows.where(i), "error": "caption is null"})
            continue
        units.append(Unit(prompt_id_of(cap), cap, [(i, "jpg_0"), (i, "jpg_1")], {"row": i}))
    names = set(rows.schema.names)
    return Input("pairs", rows, units, bad, dict(fp, rows=n), has_labels={"label_0", "label_1"} <= names)
