"""Layouts of preference pairs published on the Hub after Pick-a-Pic v2 went away, for `aifeedback.data.sources`
(which registers them as the pair sources `hpdv3` and `pickapic-wds`; this module imports none of it).

- HPDv3 (`MizzenAI/HPDv3`, the HPSv3 data): JSON files (train.json, test.json, ...) holding a list of
  {prompt, path1, path2, ...}; path1 is the preferred image (the HPSv3 trainer labels every pair 1 for path1; its
  other keys, such as confidence, choice_dist, model1, model2, are kept out of the pairs). The images come as
  images.tar.gz.* parts (`cat images.tar.gz.* | gunzip | tar -x` in the dataset folder) and the paths are relative
  to the folder holding the JSON file. Read as a ranked list of two (aifeedback.data.ranked): a light table of
  captions and checked image paths, each image read when its pair is used.
- Pick-a-Pic v2 as WebDataset tar shards (`sayakpaul/pickapic_v2_webdataset`: 00000.tar, ...): one sample per key,
  {key}.jpg_0.jpg, {key}.jpg_1.jpg, {key}.label_0.txt, {key}.label_1.txt ("1.0" / "0.0" / "0.5") and
  {key}.original_prompt.txt (its only prompt; a {key}.caption.txt wins when a shard has one). Read through
  `datasets`' webdataset builder (streamed where the consumer streams) and renamed to the canonical columns.
  The Parquet mirrors (such as `xzuyn/pickapic_v2_only_some`) keep Pick-a-Pic's own columns: the `pickapic`
  source reads them as they are.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import datasets

from aifeedback.data import ranked
from aifeedback.errors import DataError

HPDV3_KEYS = ("prompt", "path1", "path2")
# canonical column <- the WebDataset field it comes from (first found); fields are named without the key
WDS_FIELDS = {"caption": ("caption.txt", "original_prompt.txt"), "jpg_0": ("jpg_0.jpg", "jpg_0.png"),
              "jpg_1": ("jpg_1.jpg", "jpg_1.png"), "label_0": ("label_0.txt",),
              "label_1": ("label_1.txt",)}


# ---------------------------------------------------------------------------------------------------------------
# HPDv3

def hpdv3_files(path: Path) -> list[Path]:
    """The HPDv3 JSON files of a file or folder (top level), told by the keys in their first 4 KB (light)."""
    return [f for f in ranked.json_files(path) if all(f'"{k}"' in ranked.json_opening(f) for k in HPDV3_KEYS)]


def hpdv3_groups(file: Path) -> list[ranked.Group]:
    """The pairs of one HPDv3 JSON file as ranked lists of two: path1 (image 0) scored above path2 (image 1)."""
    records = ranked.json_records(file, "HPDv3's train.json or test.json (or another file of its layout)")
    groups = []
    for n, rec in enumerate(records):
        missing = [k for k in HPDV3_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            have = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
            raise DataError(f"{file} record {n} lacks HPDv3's key(s) {', '.join(missing)} (it has: {have}). Fix: "
                            "every record needs prompt, path1 (the preferred image) and path2, paths relative to "
                            "the JSON file's folder")
        groups.append(ranked.Group(rec["prompt"], [rec["path1"], rec["path2"]], [1.0, 0.0],
                                   f"{file} record {n} (image 0 = path1, image 1 = path2)"))
    return groups


def hpdv3_table(path: Path, files: list[Path]) -> tuple[Any, ranked.Resolver]:
    """The pairs of HPDv3 `files` as a light `datasets` table whose images are read when a pair is used (set the
    returned resolver as its transform); every image path is checked now, naming the file and record."""
    tables = []
    for f in files:
        groups = hpdv3_groups(f)
        if groups:
            st = f.stat()
            key = f"{f.resolve()} {st.st_size} {st.st_mtime_ns}"
            tables.append(ranked.pairs_table(groups, "all", f.parent, key))
    if not tables:
        raise DataError(f"no usable preference pairs in {path}: {', '.join(map(str, files))} hold no records. Fix: "
                        "pass HPDv3's train.json or test.json with its extracted images/ folder")
    ds = tables[0] if len(tables) == 1 else datasets.concatenate_datasets(tables)
    resolver = ranked.Resolver()
    return ds.with_transform(resolver), resolver


# ---------------------------------------------------------------------------------------------------------------
# Pick-a-Pic v2 in WebDataset tar shards

def wds_files(path: Path) -> list[Path]:
    """The .tar shards of a file or folder, in path order (hidden folders skipped)."""
    if path.is_file():
        return [path] if path.suffix == ".tar" else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*.tar") if not any(s.startswith(".") for s in p.relative_to(path).parts))


def shard_fields(tar: Path, members: int = 16) -> set[str]:
    """The field names (file names less their key) among the first members of a tar shard (light)."""
    try:
        with tarfile.open(tar) as t:
            names = []
            for info in t:
                names.append(info.name.rsplit("/", 1)[-1])
                if len(names) >= members:
                    break
    except (OSError, tarfile.TarError) as e:  # tarfile's message lists every compression it tried, one per line
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not a tar archive"
        raise DataError(f"{tar} is not a readable tar shard ({why}); remove or replace it") from None
    return {n.split(".", 1)[1] for n in names if "." in n}


def is_pickapic_wds(path: Path) -> bool:
    """Local tar shards whose first samples carry Pick-a-Pic's two image fields."""
    files = wds_files(path)
    if not files:
        return False
    fields = shard_fields(files[0])
    return all(any(f in fields for f in WDS_FIELDS[c]) for c in ("jpg_0", "jpg_1"))


def wds_renames(columns: list[str], where: str, labels: bool = True) -> dict[str, str]:
    """{field column: canonical column} of a loaded WebDataset table; a DataError naming what `where` lacks."""
    renames, missing = {}, []
    for canonical, fields in WDS_FIELDS.items():
        found = next((f for f in fields if f in columns), None)
        if found is not None:
            renames[found] = canonical
        elif labels or canonical not in ("label_0", "label_1"):
            missing.append(" or ".join(f"{{key}}.{f}" for f in fields))
    if missing:
        raise DataError(f"{where} lacks the Pick-a-Pic WebDataset field(s) {', '.join(missing)} (its samples have: "
                        f"{', '.join(c for c in columns if not c.startswith('__'))}). Fix: every sample needs "
                        "jpg_0.jpg, jpg_1.jpg, label_0.txt, label_1.txt and original_prompt.txt (or caption.txt)")
    return renames


def wds_table(path: Path, files: list[Path], streaming: bool, labels: bool) -> Any:
    """Local tar shards as a `datasets` table (IterableDataset when streaming) in the canonical columns."""
    ds = datasets.load_dataset("webdataset", data_files=[str(f) for f in files], split="train", streaming=streaming)
    return wds_canonical(ds, str(path), labels)


def wds_canonical(ds: Any, where: str, labels: bool = True) -> Any:
    """A loaded WebDataset table (local shards or a hub id) renamed to the canonical columns, its images kept as the
    stored bytes (a stream's rename would decode and re-encode them)."""
    renames = wds_renames(list(ds.column_names or ()), where, labels)
    for field, canonical in renames.items():
        if canonical in ("jpg_0", "jpg_1"):
            ds = ds.cast_column(field, datasets.Image(decode=False))
    return ds.rename_columns(renames)
