"""Prompt sources -> a list of `Prompt(prompt_id, text, meta)`.

A source is one of:
  parti                 the built-in PartiPrompts (1632 prompts, package data; meta has `category`)
  FILE.txt              one prompt per line
  FILE.jsonl|csv|tsv    one prompt per row, read from a column (`column`, default: prompt / caption / text)
  DIR or OWNER/NAME     a local or hub `datasets` dataset (`column`, `split`), e.g. Pick-a-Pic captions
Texts are stripped; empty ones are dropped, and so are repeats (by default). The `prompt_id` is a hash of the
text, so the same prompt gets the same id (and, in `aif generate`, the same seeds) in every file and run.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from aifeedback.errors import DataError
from aifeedback.resources import resource_path

BUILTIN = {"parti": ("PartiPrompts.tsv", "Prompt")}
FILE_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")
DEFAULT_COLUMNS = ("prompt", "caption", "text", "Prompt")
CATEGORY_COLUMNS = ("category", "Category")


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id (hash of the text), the text, and metadata such as `category`."""

    prompt_id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def category(self) -> str | None:
        return self.meta.get("category")


def prompt_id(text: str) -> str:
    """Stable short id of a prompt text (16 hex digits of its SHA-256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def data_path(name: str) -> Path:
    """A file shipped in aifeedback/resources/."""
    return resource_path(name)


def load_prompts(source: str, column: str | None = None, split: str | None = None, limit: int | None = None,
                 dedupe: bool = True) -> list[Prompt]:
    """Read prompts from a built-in set, a file, or a `datasets` dataset (see the module docstring)."""
    source = str(source)
    kind = source_kind(source)
    if kind == "builtin":
        name, default_column = BUILTIN[source]
        rows, label = _read_table(data_path(name), column or default_column), f"built-in '{source}'"
    elif kind == "file":
        path = Path(source).expanduser()
        rows, label = _read_file(path, column), str(path)
    else:
        rows, label = _read_dataset(source, column, split), f"dataset '{source}'"
    prompts = _collect(rows, limit, dedupe)
    if not prompts:
        raise DataError(f"{label} holds no prompts (every row is empty). Fix: point --prompts at a file with one "
                        f"prompt per line / row.")
    return prompts


def source_kind(source: str) -> str:
    """'builtin', 'file' or 'dataset' (a local folder or hub id); a missing file fails here, before any import."""
    if source in BUILTIN:
        return "builtin"
    path = Path(source).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir() or not (path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~"))):
        return "dataset"
    raise DataError(f"prompt file {source} does not exist. Fix: check the path, or use --prompts parti "
                    f"for the built-in PartiPrompts.")


def _collect(rows: Iterable[tuple[str, dict]], limit: int | None, dedupe: bool) -> list[Prompt]:
    out: list[Prompt] = []
    counts: dict[str, int] = {}
    for text, meta in rows:
        text = (text or "").strip()
        if not text:
            continue
        pid = prompt_id(text)
        repeats = counts[pid] = counts.get(pid, 0) + 1
        if repeats > 1:
            if dedupe:
                continue
            pid = f"{pid}-{repeats - 1}"  # a kept repeat needs its own id, or it would get the same seeds and images
        out.append(Prompt(pid, text, meta))
        if limit is not None and len(out) >= limit:
            break  # stop reading: a streamed dataset may be huge
    return out


def _read_file(path: Path, column: str | None) -> Iterator[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError(f"prompt file {path} is empty. Fix: write one prompt per line (.txt) or row "
                        "(.jsonl/.csv/.tsv).")
    if suffix == ".txt":
        if column:
            raise DataError(f"--prompt-column does not apply to {path}: a .txt file holds one prompt per line.")
        return ((line, {}) for line in path.read_text(encoding="utf-8").splitlines())
    if suffix in (".csv", ".tsv"):
        return _read_table(path, column)
    if suffix == ".jsonl":
        return _read_jsonl(path, column)
    raise DataError(f"prompt file {path}: unknown format '{suffix}'. Use one of {', '.join(FILE_SUFFIXES)}, "
                    f"a datasets folder, or 'parti'.")


def _pick_column(available: list[str], column: str | None, label: str) -> str:
    if column is not None:
        if column not in available:
            raise DataError(f"{label} has no column '{column}'. Available columns: {', '.join(available)}. "
                            f"Fix: pass one of them as --prompt-column.")
        return column
    for c in DEFAULT_COLUMNS:
        if c in available:
            return c
    raise DataError(f"{label}: no prompt column found (looked for {', '.join(DEFAULT_COLUMNS)}). "
                    f"Available columns: {', '.join(available)}. Fix: pass one as --prompt-column.")


def _meta(row: dict) -> dict:
    for c in CATEGORY_COLUMNS:
        if row.get(c) not in (None, ""):
            return {"category": str(row[c])}
    return {}


def _read_table(path: Path, column: str | None) -> list[tuple[str, dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        col = _pick_column(list(reader.fieldnames or []), column, str(path))
        return [(row[col], _meta(row)) for row in reader]


def _read_jsonl(path: Path, column: str | None) -> Iterator[tuple[str, dict]]:
    col = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg}). Fix: one JSON object per line.") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object like {{\"prompt\": \"...\"}}.")
            col = col or _pick_column(list(row), column, f"{path} (line {n})")
            if col not in row:
                raise DataError(f"{path}, line {n}: no '{col}' key (it has: {', '.join(row)}).")
            yield str(row[col]) if row[col] is not None else "", _meta(row)


def _read_dataset(source: str, column: str | None, split: str | None) -> Iterator[tuple[str, dict]]:
    """Stream a column of a `datasets` dataset: a save_to_disk folder, a data folder, or a hub id."""
    import datasets

    fix = ("Fix: check the name (a local folder or a hub dataset id, available offline only if cached), "
           "or use a .txt/.jsonl/.csv/.tsv file, or 'parti'.")
    try:
        if Path(source).is_dir() and any((Path(source) / f).exists() for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(source)
        else:  # streaming: reading one text column must not download every image of Pick-a-Pic
            ds = datasets.load_dataset(source, split=split, streaming=True)
    except Exception as e:  # datasets raises many types (FileNotFound, DatasetNotFound, ValueError, ConnectionError)
        raise DataError(f"could not read dataset '{source}': {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}. {fix}") from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = list(ds)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in ds:
            what = "has several splits" if split is None else f"has no split '{split}'"
            raise DataError(f"dataset '{source}' {what}: {', '.join(splits)}. Fix: pass one as --split.")
        ds = ds[split]
    names = ds.column_names
    if names is None:  # some streamed sources only know their columns after the first row
        names = list(next(iter(ds), {}))
    col = _pick_column(list(names), column, f"dataset '{source}'")
    keep = [col] + [c for c in CATEGORY_COLUMNS if c in names]
    try:
        for row in ds.select_columns(keep):
            yield str(row[col]) if row[col] is not None else "", _meta(row)
    except Exception as e:  # a corrupt shard surfaces while iterating
        raise DataError(f"could not read rows of dataset '{source}': {type(e).__name__}: {e}") from None
