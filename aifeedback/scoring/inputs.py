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

from aifeedback.data.labels import LABEL_COLUMNS, PAIR_COLUMNS
from aifeedback.data.mapping import parse_columns
from aifeedback.data.rows import HubRows, ParquetRows  # noqa: F401  (HubRows: part of this module's interface)
from aifeedback.data.sources import open_pairs, require_columns
from aifeedback.errors import DataError
from aifeedback.storage.files import read_json
from aifeedback.storage.manifest import MANIFEST, read_manifest
from aifeedback.storage.shards import shard_files

GENERATE_COLUMNS = ("prompt_id", "prompt", "k", "seed", "image")


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


def open_input(source: str, split: str | None = None, limit: int | None = None, columns: list[str] | None = None,
               pairing: str = "all") -> Input:
    """Open `source`: an `aif generate` output dir, or preference pairs any pair source reads (a local Parquet dir
    or file in the Pick-a-Pic layout, an `aif score` output, a hub id; see aifeedback.data.sources)."""
    path = Path(source).expanduser()
    if (path / MANIFEST).exists() and read_json(path / MANIFEST).get("stage") == "generate":
        return _generate_input(path, limit)
    table = open_pairs(source, split, labels=False, columns=parse_columns(columns), pairing=pairing)
    if table.files:
        fp = {"path": str(path.resolve()), "files": _stat(table.files)}
    elif path.exists():  # a save_to_disk folder
        fp = {"path": str(path.resolve()), "split": split, "dataset": table.ds._fingerprint}
    else:
        fp = {"hub": source, "split": split, "dataset": table.ds._fingerprint}
    return _pairs_input(table.rows(), limit, fp)


def _stat(files: list[Path]) -> list[tuple[str, int]]:
    return [(f.name, f.stat().st_size) for f in files]


def _generate_input(path: Path, limit: int | None) -> Input:

    manifest = read_manifest(path, "generate")
    if not manifest.get("complete"):
        raise DataError(f"{path} is an unfinished `aif generate` output; rerun that generate command to complete it")
    rows = ParquetRows(shard_files(path), str(path))
    require_columns(rows.label, rows.schema.names, GENERATE_COLUMNS, "`aif generate` output")
    names = set(rows.schema.names)
    meta_cols = ["prompt_id", "prompt", "k", "seed"] + (["category"] if "category" in names else [])
    cols = {c: rows.column(c) for c in meta_cols}
    groups: dict[str, Unit] = {}
    bad: list[dict[str, Any]] = []
    for i in range(len(rows)):
        pid, text, k, seed = cols["prompt_id"][i], cols["prompt"][i], cols["k"][i], cols["seed"][i]
        values = (("prompt_id", pid), ("prompt", text), ("k", k), ("seed", seed))
        problem = next((f"{c} is null" for c, v in values if v is None), None)
        if problem is None and not str(text).strip():  # nothing to score the images against
            problem = "prompt is empty or whitespace-only"
        if problem:
            bad.append({"where": rows.where(i), "error": problem})
            continue
        category = cols.get("category", [None] * len(rows))[i]
        unit = groups.setdefault(str(pid), Unit(str(pid), text, [], {"category": category, "k": [], "seed": []}))
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
    require_columns(rows.label, rows.schema.names, PAIR_COLUMNS)
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
    return Input("pairs", rows, units, bad, dict(fp, rows=n), has_labels=set(LABEL_COLUMNS) <= names)
