"""Prompt sources -> a list of `Prompt(prompt_id, text, meta)`.

A source is one of:
  parti                 the built-in PartiPrompts (1632 prompts, package data; meta has `category`)
  geneval               the built-in GenEval prompts (553, package data; their task specs: evaluation/geneval.py)
  FILE.txt              one prompt per line
  FILE.jsonl|csv|tsv    one prompt per row, read from a column (`column`, default: prompt / caption / text)
  DIR or OWNER/NAME     a local or hub `datasets` dataset (`column`, `split`), e.g. Pick-a-Pic captions
Files are UTF-8 (a byte-order mark is dropped) or UTF-16 with a byte-order mark; lines end in LF, CRLF or CR.
A prompt value must be a string (null counts as empty); anything else, undecodable bytes, binary files and CSV rows
with more cells than the header are refused with the file, the line and the fix.
Texts are stripped; empty and whitespace-only ones are skipped with a note that counts them and names their lines
(rows of a dataset), and repeats are dropped (by default). The `prompt_id` is a hash of the
text, so the same prompt gets the same id (and, in `aif generate`, the same seeds) in every file and run.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from aifeedback.errors import DataError
from aifeedback.resources import resource_path

BUILTIN = {"parti": ("PartiPrompts.tsv", "Prompt"), "geneval": ("geneval/evaluation_metadata.jsonl", "prompt")}
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
        rows, label = _read_file(data_path(name), column or default_column), f"built-in '{source}'"
    elif kind == "file":
        path = Path(source).expanduser()
        rows, label = _read_file(path, column), str(path)
    else:
        rows, label = _read_dataset(source, column, split), f"dataset '{source}'"
    prompts, empty = _collect(rows, limit, dedupe)
    if not prompts:
        raise DataError(f"{label} holds no prompts (every row is empty). Fix: point --prompts at a file with one "
                        f"prompt per line / row.")
    if empty:
        _note_empty(label, empty)
    return prompts


_NOTED: set[tuple[str, int]] = set()  # (source, count) already noted by this process: a stage reads its prompts twice


def _note_empty(label: str, empty: list[str]) -> None:
    """Say once per process (the main one under `accelerate launch`) which empty prompts were skipped."""
    import os

    if (label, len(empty)) in _NOTED or os.environ.get("RANK", "0") != "0":
        return
    _NOTED.add((label, len(empty)))
    from aifeedback.console import note

    listed = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    note(f"note: {label}: {len(empty)} empty or whitespace-only prompt(s) skipped ({listed})")


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


def _collect(rows: Iterable[tuple[str, dict, str]], limit: int | None, dedupe: bool) -> tuple[list[Prompt], list[str]]:
    """The prompts of (text, meta, where) rows, and where the empty ones were ('line 3', 'row 7')."""
    out: list[Prompt] = []
    empty: list[str] = []
    counts: dict[str, int] = {}
    for text, meta, where in rows:
        text = (text or "").strip()
        if not text:
            empty.append(where)
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
    return out, empty


def _read_file(path: Path, column: str | None) -> Iterator[tuple[str, dict, str]]:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError(f"prompt file {path} is empty. Fix: write one prompt per line (.txt) or row "
                        "(.jsonl/.csv/.tsv).")
    if suffix == ".txt":
        if column:
            raise DataError(f"--prompt-column does not apply to {path}: a .txt file holds one prompt per line.")
        lines = _lines(read_text(path))
        if lines[-1] == "":  # the end of the last line, not an empty one
            lines.pop()
        return ((line, {}, f"line {n}") for n, line in enumerate(lines, 1))
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


# Byte-order marks, longest first (UTF-32's LE mark starts with UTF-16's); Python's utf-8 codec would keep U+FEFF.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_SAVE_UTF8 = "Fix: save the file as UTF-8 text (most editors: Save As -> Encoding: UTF-8)."


def read_text(path: Path) -> str:
    """A prompt file's text: UTF-8 or a Unicode encoding its byte-order mark names; anything else is refused with
    the line of the first undecodable byte (guessing a legacy encoding would silently change the prompts)."""
    data = path.read_bytes()
    encoding = "utf-8"
    for bom, name in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom):], name
            break
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not {encoding.upper()} text, perhaps a binary file (byte "
                        f"0x{data[e.start]:02x} at offset {e.start}). {_SAVE_UTF8}") from None
    if "\x00" in text:  # decodes, but a NUL is never in a text file: an image, archive or UTF-16 without its BOM
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}, line {line}: holds a NUL byte, so it is a binary file (or UTF-16 without a "
                        f"byte-order mark), not prompts. {_SAVE_UTF8}")
    return text


def _lines(text: str) -> list[str]:
    """Lines ended by LF, CRLF or CR only: str.splitlines would also split inside a line at U+2028, form feeds and
    other separators, changing the prompt and the line numbers an editor shows."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _prompt_value(value: Any, where: str, col: str) -> str:
    """A prompt cell as written: a string, or null (an empty prompt); other JSON values are refused, as str() would
    turn 42, true or a list into a prompt the user never wrote."""
    if value is None or isinstance(value, str):
        return value or ""
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)
    raise DataError(f"{where}: '{col}' is {kind} ({json.dumps(value)[:60]}), not a string. Fix: write the prompt "
                    f"as a JSON string, e.g. {{\"{col}\": \"...\"}}.")


def _meta(row: dict) -> dict:
    for c in CATEGORY_COLUMNS:
        if row.get(c) not in (None, ""):
            return {"category": str(row[c])}
    return {}


_EXTRA = object()  # DictReader's key for the cells of a row beyond the header


def _read_table(path: Path, column: str | None) -> list[tuple[str, dict, str]]:
    tsv = path.suffix.lower() == ".tsv"
    sep = "\t" if tsv else ","
    # TSV has no quoting (a cell cannot hold a tab or a line break): a quote is text, as in PartiPrompts'
    # '"G I G G L E" painted ...', which CSV quoting would read as 'G I G G L E painted ...'
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=sep, restkey=_EXTRA,
                            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    header = list(reader.fieldnames or [])
    if reader.line_num and not header:  # a blank first line, read as a header with no columns
        raise DataError(f"{path}, line 1: empty, but a {path.suffix.lower()} file starts with its header line (e.g. "
                        "prompt). Fix: remove the blank line(s) before the header.")
    twice = next((c for c in header if header.count(c) > 1), None)
    if twice is not None:  # DictReader would keep the last cell of the name silently
        cells = [str(n) for n, c in enumerate(header, 1) if c == twice]
        raise DataError(f"{path}, line {reader.line_num}: the header names the column '{twice[:60]}' twice (cells "
                        f"{' and '.join(cells)}), so which one holds the prompt is a guess. Fix: give each column its "
                        f"own name.")
    col = _pick_column(header, column, str(path))
    rows = []
    for start, row in _table_rows(reader, path):
        if _EXTRA in row:  # csv would drop the extra cells: a prompt with an unquoted separator loses its tail
            raise DataError(f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[_EXTRA])} cells but "
                            f"the header has {len(reader.fieldnames)}. Fix: "
                            + ("a .tsv cell cannot hold a tab (TSV has no quoting): remove the tab from the prompt, or "
                               "save the file as .csv and quote that cell." if tsv else
                               "quote a cell that holds a comma (\"a cat, sitting\")."))
        rows.append((row[col] or "", _meta(row), f"line {start}"))
    return rows


def _table_rows(reader: csv.DictReader, path: Path) -> Iterator[tuple[int, dict]]:
    """(line the row ends on, row) of a table: the line an empty prompt's row is on (a quoted cell may span lines)."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a cell over csv's field size limit: an unclosed quote swallowing the file
            raise DataError(f"{path}, line {start}: not a valid table row ({e}). Fix: close the quote that opens a "
                            f"cell, or quote the cell in full.") from None
        yield reader.line_num, row


class _DuplicateKey(Exception):
    """A JSON object names a key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise _DuplicateKey(twice)
    return dict(pairs)


def _read_jsonl(path: Path, column: str | None) -> Iterator[tuple[str, dict, str]]:
    col = None
    for n, line in enumerate(_lines(read_text(path)), 1):  # JSON strings hold no raw CR/LF: every row is one line
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {n}: not valid JSON ({e.msg}). Fix: one JSON object per line.") from None
        except _DuplicateKey as e:
            raise DataError(f"{path}, line {n}: the key '{str(e)[:60]}' is given twice in one object, so which "
                            "value is the prompt is a guess (JSON readers keep the last one silently). Fix: keep one "
                            "of them.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object like {{\"prompt\": \"...\"}}.")
        col = col or _pick_column(list(row), column, f"{path} (line {n})")
        if col not in row:
            raise DataError(f"{path}, line {n}: no '{col}' key (it has: {', '.join(row)}).")
        yield _prompt_value(row[col], f"{path}, line {n}", col), _meta(row), f"line {n}"


def _read_dataset(source: str, column: str | None, split: str | None) -> Iterator[tuple[str, dict, str]]:
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
        for n, row in enumerate(ds.select_columns(keep)):
            yield _prompt_value(row[col], f"dataset '{source}', row {n}", col), _meta(row), f"row {n}"
    except DataError:
        raise
    except Exception as e:  # a corrupt shard surfaces while iterating
        raise DataError(f"could not read rows of dataset '{source}': {type(e).__name__}: {e}") from None
