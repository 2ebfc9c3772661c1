"""`--columns caption=COL,image_0=COL,image_1=COL,label=COL`: any other layout of preference pairs, mapped to the
canonical columns (caption, jpg_0, jpg_1, label_0, label_1). Light to parse (the configs check the spec before any
import); `map_columns` imports `datasets` when a table is mapped.

Keys: caption, image_0, image_1 (required), and the labels as either `label` (which image is preferred: 0 or the
image_0 column's name for image_0, 1 or the image_1 column's name for image_1, 0.5 or "tie" for a tie; anything
else is a bad label, counted and dropped) or `label_0` + `label_1` (Pick-a-Pic's 1/0, 0/1, 0.5/0.5). `aif score`
relabels pairs, so it needs no label. An image cell may hold bytes, a `datasets` Image or a path relative to the
dataset folder (read only inside it: aifeedback.data.trl.image_bytes).
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
from pathlib import Path
from typing import Any

from aifeedback.data.trl import image_bytes
from aifeedback.errors import DataError

REQUIRED_KEYS = ("caption", "image_0", "image_1")
LABEL_KEYS = ("label", "label_0", "label_1")
KEYS = REQUIRED_KEYS + LABEL_KEYS
CANONICAL = {"caption": "caption", "image_0": "jpg_0", "image_1": "jpg_1", "label_0": "label_0", "label_1": "label_1"}
# What a --columns suggestion guesses per key from a table's column names (first found wins)
GUESSES = {
    "caption": ("caption", "prompt", "text", "instruction", "query"),
    "image_0": ("jpg_0", "image_0", "chosen", "image_a", "image1", "image_1", "img_0", "left"),
    "image_1": ("jpg_1", "image_1", "rejected", "image_b", "image2", "image_2", "img_1", "right"),
    "label": ("label", "preference", "choice", "winner", "chosen_side", "pref"),
}


def parse_columns(spec: list[str] | str | None) -> dict[str, str]:
    """{key: column} of a --columns spec ('k=v,k=v' or a list of 'k=v'); {} when unset. Raises DataError listing
    every problem."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    mapping: dict[str, str] = {}
    problems = []
    for item in (i.strip() for i in items if i.strip()):
        key, eq, column = (s.strip() for s in item.partition("="))
        if not eq or not key or not column:
            problems.append(f"'{item}' is not KEY=COLUMN")
        elif key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            problems.append(f"unknown key '{key}'{f' (did you mean {close[0]}?)' if close else ''}; keys: "
                            f"{', '.join(KEYS)}")
        elif key in mapping:
            problems.append(f"key '{key}' given twice")
        else:
            mapping[key] = column
    if mapping or problems:
        problems += [f"missing {k}=COLUMN" for k in REQUIRED_KEYS if k not in mapping]
        if "label" in mapping and ({"label_0", "label_1"} & mapping.keys()):
            problems.append("give label=COLUMN or label_0=COLUMN,label_1=COLUMN, not both")
        elif ("label_0" in mapping) != ("label_1" in mapping):
            problems.append("label_0 and label_1 go together")
    if problems:
        raise DataError(f"--columns {','.join(items)}: {'; '.join(problems)}. Fix: pass --columns caption=COLUMN,"
                        "image_0=COLUMN,image_1=COLUMN,label=COLUMN")
    return mapping


def columns_problems(spec: list[str] | str | None) -> list[str]:
    """A config's validate() check of --columns: [] or the one message."""
    try:
        parse_columns(spec)
    except DataError as e:
        return [f"columns: {e}"]
    return []


def suggest(have: list[str]) -> str:
    """A --columns mapping for a table with columns `have`: each key's likely column, else COLUMN to fill in."""
    def guess(key: str) -> str:
        return next((c for c in GUESSES[key] if c in have), "COLUMN")

    return ",".join(f"{k}={guess(k)}" for k in ("caption", "image_0", "image_1", "label"))


def check_mapping(mapping: dict[str, str], have: list[str] | None, where: str, labels: bool) -> None:
    """The mapped columns exist in `where` (unknown columns of a stream are checked when it is read), and the
    mapping has labels when the consumer needs them."""
    if labels and not any(k in mapping for k in LABEL_KEYS):
        raise DataError(f"--columns maps no label for {where}. Fix: add label=COLUMN (0 = image_0 preferred, 1 = "
                        "image_1, 0.5 = tie) or label_0=COLUMN,label_1=COLUMN")
    missing = [f"{k}={c}" for k, c in mapping.items() if have is not None and c not in have]
    if missing:
        raise DataError(f"{where} lacks the column(s) {', '.join(missing)} named by --columns (it has: "
                        f"{', '.join(have)}). Fix: pass --columns {suggest(have)}")


def side_labels(value: Any, names: tuple[str, str]) -> tuple[float, float]:
    """(label_0, label_1) of a `label` cell: which image is preferred (see the module docstring); NaNs for
    anything else, so the one label rule counts the row as bad."""
    if isinstance(value, str):
        value = value.strip()
        value = {names[0]: 0, names[1]: 1, "tie": 0.5}.get(value, value)
    try:
        v = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        v = None
    return {0.0: (1.0, 0.0), 1.0: (0.0, 1.0), 0.5: (0.5, 0.5)}.get(v, (float("nan"), float("nan")))


def map_columns(ds: Any, mapping: dict[str, str], root: Path | None, label: str,
                files: list[Path] | None = None, rows_per_file: list[int] | None = None,
                first_wins: bool = False) -> Any:
    """`ds` (a `datasets` Dataset or IterableDataset) with the mapped columns replaced by the canonical ones,
    images as bytes. `root`: the folder image paths are read inside (None: a hub dataset, whose paths cannot be
    read). `files`/`rows_per_file` name a row's file in errors. first_wins: image_0 is always the preferred one
    (TRL's chosen), no label column."""
    import datasets

    for key in ("image_0", "image_1"):  # keep stored images as {'bytes', 'path'}: never decode them here
        if ds.features is not None and isinstance(ds.features.get(mapping[key]), datasets.Image):
            ds = ds.cast_column(mapping[key], datasets.Image(decode=False))
    used = set(mapping.values())
    out = {"caption": datasets.Value("string"), "jpg_0": datasets.Value("binary"), "jpg_1": datasets.Value("binary")}
    if first_wins or any(k in mapping for k in LABEL_KEYS):
        out.update({"label_0": datasets.Value("float64"), "label_1": datasets.Value("float64")})
    features = None
    if ds.features is not None:
        features = datasets.Features({c: f for c, f in ds.features.items() if c not in used and c not in out})
        features.update(out)
    remove = [c for c in (ds.column_names or []) if c in used or c in out]
    offsets = [0]
    for n in rows_per_file or []:
        offsets.append(offsets[-1] + n)
    kwargs = dict(mapping=mapping, root=root, label=label, files=[str(f) for f in files or []], offsets=offsets,
                  first_wins=first_wins)
    if isinstance(ds, datasets.IterableDataset):
        return ds.map(_canonical, batched=True, with_indices=True, fn_kwargs=kwargs, features=features,
                      remove_columns=remove)
    return ds.map(_canonical, batched=True, with_indices=True, fn_kwargs=kwargs, features=features,
                  remove_columns=remove, new_fingerprint=_fingerprint(ds, mapping, root, first_wins),
                  desc="mapped pairs")


def _fingerprint(ds: Any, mapping: dict[str, str], root: Path | None, first_wins: bool) -> str:
    """The mapped table's cache key: the source's, the mapping and, for path columns, the size and time of every
    image file they name, so an image replaced in place is read again, never served from the cache."""
    import datasets

    h = hashlib.sha256(f"columns-v1 {ds._fingerprint} {sorted(mapping.items())} {root and root.resolve()} "
                       f"{first_wins}".encode())
    for key in ("image_0", "image_1"):
        if root is not None and ds.features[mapping[key]] == datasets.Value("string"):  # light: paths, not images
            for name in ds[mapping[key]]:
                st = (root / name).stat() if name is not None and (root / name).is_file() else None
                h.update(f"{name} {st and (st.st_size, st.st_mtime_ns)}".encode())
    return h.hexdigest()[:32]


def _canonical(batch: dict[str, list], indices: list[int], mapping: dict[str, str], root: Path | None, label: str,
               files: list[str], offsets: list[int], first_wins: bool) -> dict:
    """One batch of mapped rows in the canonical columns."""
    def where(k: int) -> str:
        """The k-th row of the batch, for errors: the record and images a ranked pair came from, or file and row."""
        if "where" in batch:
            return batch["where"][k]
        i = indices[k]
        if not files:
            return f"{label} row {i}"
        f = bisect.bisect_right(offsets, i) - 1
        return f"{files[f]} row {i - offsets[f]}"

    out: dict[str, list] = {"caption": batch[mapping["caption"]]}
    for key in ("image_0", "image_1"):
        column = mapping[key]
        out[CANONICAL[key]] = [image_cell(v, root, lambda k=k, c=column: f"{where(k)} ({c})")
                               for k, v in enumerate(batch[column])]
    sources = label_sources(mapping, first_wins)
    if sources is not None:
        rows = [{c: batch[c][k] for c in sources} for k in range(len(indices))]
        pairs = [row_labels(mapping, r, first_wins) for r in rows]
        out["label_0"], out["label_1"] = [p[0] for p in pairs], [p[1] for p in pairs]
    return out


def label_sources(mapping: dict[str, str], first_wins: bool) -> list[str] | None:
    """The columns the labels are read from ([] when image_0 always wins); None: the mapping has no label."""
    if first_wins:
        return []
    keys = [k for k in LABEL_KEYS if k in mapping]
    return [mapping[k] for k in keys] if keys else None


def row_labels(mapping: dict[str, str], row: dict[str, Any], first_wins: bool) -> tuple[float, float]:
    """(label_0, label_1) of one row (holding the label_sources columns); NaNs for a bad label."""
    if first_wins:
        return 1.0, 0.0
    if "label" in mapping:
        return side_labels(row[mapping["label"]], (mapping["image_0"], mapping["image_1"]))
    return _number(row[mapping["label_0"]]), _number(row[mapping["label_1"]])


def canonical_mapping(have: list[str]) -> dict[str, str]:
    """The mapping of a table already in the canonical columns onto itself (labels when it has both): read through
    it, a Pick-a-Pic-layout file gives every consumer the cells a mapped layout gives (images as bytes, from bytes,
    a `datasets` Image or a path inside the folder; labels as numbers)."""
    mapping = {"caption": "caption", "image_0": "jpg_0", "image_1": "jpg_1"}
    if "label_0" in have and "label_1" in have:
        mapping.update(label_0="label_0", label_1="label_1")
    return mapping


def canonical_cell(name: str, value: Any) -> Any:
    """A cell of a loaded `datasets` table (hub id, save_to_disk) as every consumer reads it: an image column's
    stored bytes (a `datasets` Image's, never a decoded image), a label as a number (NaN: a bad label); other cells
    as they are. Local files get the same through `canonical_mapping`."""
    if name in ("jpg_0", "jpg_1") and isinstance(value, dict):
        return value.get("bytes")  # a path in a loaded dataset cannot be resolved (see image_cell)
    if name in ("label_0", "label_1"):
        return _number(value)
    return value


def mapped_names(have: list[str], mapping: dict[str, str], first_wins: bool) -> list[str]:
    """The columns of a mapped table whose source has columns `have`: the unmapped ones, then the canonical ones."""
    out = ["caption", "jpg_0", "jpg_1"] + (["label_0", "label_1"] if label_sources(mapping, first_wins) is not None
                                           else [])
    return [c for c in have if c not in mapping.values() and c not in out] + out


def source_columns(name: str, mapping: dict[str, str], first_wins: bool) -> list[str]:
    """The source columns a mapped column is made from (labels: never an image column)."""
    if name in ("label_0", "label_1"):
        return label_sources(mapping, first_wins) or []
    key = {v: k for k, v in CANONICAL.items()}.get(name)
    return [mapping[key]] if key in ("caption", "image_0", "image_1") else [name]


def image_cell(value: Any, root: Path | None, where: Any) -> bytes | None:
    """The encoded image of one mapped cell (bytes, a `datasets` Image or a path inside `root`; None: a hub
    dataset, whose paths cannot be read). `where()` names the cell in errors."""
    if isinstance(value, dict):  # a `datasets` Image: its bytes, else its path (resolved like any path)
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if root is None and isinstance(value, str):
        raise DataError(f"{where()}: the image is a path ('{value}'), which a hub dataset cannot resolve. Fix: "
                        "download the dataset with its images (`hf download --repo-type dataset ID`) and pass the "
                        "local folder")
    return image_bytes(value, root or Path("."), where)


def _number(value: Any) -> float:
    """A label cell as a float (a number, or text of one: "1", "0.5"; True/False as 1/0, as the one label rule
    reads them); NaN (a bad label, counted and dropped) when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
