"""Pair sources: the one reader of preference pairs behind `aif train`, `aif score` (relabelling pairs) and
`aif eval --scorer-accuracy`.

A source is a small plug-in (`PairSource`): `detect(target)` says whether it reads a path or hub id, `open(target,
how)` returns a `PairTable` whose rows carry the canonical columns (caption, jpg_0, jpg_1, label_0, label_1, plus
the source's other columns). The `SOURCES` registry is tried in order, fallbacks last: a layout is one `register`.
Every consumer goes through `open_pairs`, so all three share:
- one split rule (`split_files`): --split S keeps the files named S-*.* or S.* or lying under a folder named S; no
  split keeps every file; a folder whose file names carry no split at all is one split, read whatever S is;
- one column check (`require_columns`), naming the file, the missing columns and the `--columns` mapping that
  would read it (aifeedback.data.mapping: any other layout, mapped by the user);
- one label rule (`aifeedback.data.labels.winner_of`);
- the same cells: local files are read in place through a mapping (`MappedRows`; Pick-a-Pic's files through
  `canonical_mapping`), loaded datasets through `canonical_cell`, so every consumer gets images as bytes (from
  bytes, a `datasets` Image or a path inside the folder) and labels as numbers, and a bad path is refused when
  the table is opened, with the same line for all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from aifeedback.data import hub_sources, ranked
from aifeedback.data.labels import LABEL_COLUMNS, OPEN_PREFERENCES, PAIR_COLUMNS, RL_PAIRS_DIR, UNPAIRED_COLUMNS
from aifeedback.data.mapping import canonical_cell, canonical_mapping, check_mapping, map_columns, mapped_names, suggest
from aifeedback.data.rows import HubRows, MappedRows, ParquetRows
from aifeedback.data.trl import TRL_COLUMNS, TRL_MAPPING, check_path
from aifeedback.errors import DataError, first_line
from aifeedback.preflight import is_hub_id
from aifeedback.registry import Registry
from aifeedback.storage.files import read_json
from aifeedback.storage.manifest import MANIFEST, read_manifest
from aifeedback.storage.shards import shard_files

DATA_SUFFIXES = (".parquet", ".arrow")  # in order of preference: a folder holding both is read as Parquet
SPLIT_WORDS = ("train", "validation", "test")  # a folder naming none of these is not split by file name


# ---------------------------------------------------------------------------------------------------------------
# The split rule and the column check

def data_files(path: Path) -> list[Path]:
    """The Parquet (else Arrow) files of a file or folder, in path order; hidden folders (.cache/) are skipped."""
    if path.is_file():
        return [path]
    for suffix in DATA_SUFFIXES:
        files = sorted(p for p in path.rglob(f"*{suffix}")
                       if not any(part.startswith(".") for part in p.relative_to(path).parts))
        if files:
            return files
    return []


def _split_names(rel: Path) -> set[str]:
    """The splits a file's relative path names: its folders, its stem and the stem's part before the first '-'
    (hub shards are SPLIT-00000-of-00004.parquet; validation_unique-* is not in split validation)."""
    stem = rel.name.split(".")[0]
    return set(rel.parts[:-1]) | {stem, stem.split("-")[0]}


def split_files(root: Path, files: list[Path], split: str | None) -> list[Path]:
    """The files of `split` (all files when None); see the module docstring for the rule."""
    if split is None or root.is_file():
        return files
    names = [_split_names(f.relative_to(root)) for f in files]
    chosen = [f for f, n in zip(files, names, strict=True) if split in n]
    if chosen:
        return chosen
    if not any(n & set(SPLIT_WORDS) for n in names):
        return files  # not split by name: the folder is one split (as `datasets` reads it)
    found = sorted({f.name.split(".")[0].split("-")[0] for f in files})
    raise DataError(f"{root} has no files for split '{split}' (expected {split}-*.parquet, {split}.parquet or a "
                    f"{split}/ folder; its files start with: {', '.join(found)}). Fix: pass --split")


def require_columns(where: str, have: list[str], needed: tuple[str, ...], layout: str = "Pick-a-Pic") -> None:
    """The one column check: `where` must have every `needed` column."""
    missing = [c for c in needed if c not in have]
    if missing:
        raise DataError(f"{where} lacks the {layout} column(s) {', '.join(missing)} (it has: {', '.join(have)}). "
                        f"Fix: pass --columns {suggest(have)} (naming its columns), or rename its columns to "
                        f"{', '.join(needed)}")


# ---------------------------------------------------------------------------------------------------------------
# What a source opens

@dataclass
class Opening:
    """How a consumer reads: its --split, whether it streams, and the hub split it reads when --split is unset."""

    split: str | None = None
    streaming: bool = False
    hub_split: str | None = None
    columns: dict[str, str] | None = None  # --columns: the user's mapping of another layout (data/mapping.py)
    pairing: str = "all"  # --ranked-pairs: which pairs a ranked list gives (data/ranked.py)
    labels: bool = True  # whether the consumer needs labels (`aif score` relabels pairs)


@dataclass
class PairTable:
    """Pairs in the canonical columns: local data files, or a loaded `datasets` dataset (hub id, save_to_disk)."""

    label: str  # for messages: the path, or the hub id and split
    source: str  # the name of the PairSource that opened it
    files: list[Path] = field(default_factory=list)
    ds: Any = None  # a datasets Dataset / IterableDataset when there are no files
    manifest: dict[str, Any] | None = None  # an aifeedback output's manifest
    schemas: dict[str, list[str]] = field(default_factory=dict)  # file -> its columns
    lazy: Callable[[dict], dict] | None = None  # ds's transform (ranked lists: reads the images a batch refers to)
    # Files of another layout (TRL, --columns): {key: column} as --columns, image paths read inside `root` only
    mapping: dict[str, str] | None = None
    root: Path | None = None
    first_wins: bool = False  # image_0 is always the preferred one (TRL's chosen), no label column

    def __post_init__(self) -> None:
        self.schemas = {str(f): file_columns(f) for f in self.files}

    @property
    def columns(self) -> list[str] | None:
        """The columns every file has (None: a streamed dataset that does not know its columns)."""
        if self.files:
            first = self.schemas[str(self.files[0])]
            have = [c for c in first if all(c in s for s in self.schemas.values())]
            return mapped_names(have, self.mapping, self.first_wins) if self.mapping else have
        names = self.ds.column_names
        return list(names) if names is not None else None

    def require(self, needed: tuple[str, ...]) -> None:
        """Every file (or the dataset) has the needed columns."""
        for f, names in self.schemas.items() if not self.mapping else ():  # mapped: its files checked when opened
            require_columns(f, names, needed)
        if (self.ds is not None or self.mapping) and self.columns is not None:
            require_columns(self.label, self.columns, needed)

    def dataset(self, streaming: bool = False) -> Any:
        """A `datasets` Dataset (IterableDataset when streaming) of the pairs, rows in file order."""
        if self.ds is not None:
            if streaming and isinstance(self.ds, datasets.Dataset):
                if self.lazy is not None:  # a transform does not carry over to a stream: mapped there, lazily
                    return self.ds.with_format(None).to_iterable_dataset().map(self.lazy, batched=True)
                return self.ds.to_iterable_dataset()
            return self.ds
        if not any(file_rows(f) for f in self.files):  # `datasets` cannot build a split with no rows
            raise self.no_rows_error()
        builder = self.files[0].suffix[1:]
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in self.files], split="train",
                                   streaming=streaming)
        if self.mapping:
            return map_columns(ds, self.mapping, self.root, self.label, self.files,
                               [file_rows(f) for f in self.files], self.first_wins)
        return ds

    def no_rows_error(self) -> DataError:
        """Why a table of files holds no pair: for an `aif score` output, what its run dropped."""
        counts = (self.manifest or {}).get("counts")
        if counts is None:
            return DataError(f"no usable preference pairs in {self.label}: its {len(self.files)} file(s) hold no rows. "
                             "Fix: pass a dataset with labelled pairs")
        config = self.manifest.get("config", {})
        return DataError(
            f"no usable preference pairs in {self.label}: its `aif score` run made 0 pairs from {counts.get('units')} "
            f"prompts or pairs ({counts.get('ties_dropped')} pairs closer than --min-margin "
            f"{config.get('min_margin')} dropped as ties, {counts.get('images_failed')} unreadable images, "
            f"{counts.get('units_without_pair')} prompts left without a pair). Fix: rescore with a lower --min-margin "
            "or --keep-ties, or with more readable images per prompt")

    def rows(self, columns: list[str] | None = None) -> ParquetRows | MappedRows | HubRows:
        """Random access to the rows (`aif score`, `aif train`): local files are read in place (never copied into
        the `datasets` cache; another layout's mapped row by row); `columns`: what `rows[i]` returns (None: all)."""
        if self.files and self.mapping:
            return MappedRows(ParquetRows(self.files, self.label), self.mapping, self.root, self.first_wins, columns)
        if self.files:
            return ParquetRows(self.files, self.label, columns)
        return HubRows(self.dataset(), self.label)

    def iter_rows(self, columns: list[str]) -> Iterator[dict[str, Any]]:
        """Stream the rows, restricted to `columns` (those the table has)."""
        have = self.columns
        cols = [c for c in columns if have is None or c in have]
        if self.files and self.mapping:  # in place, mapped: label columns never touch an image
            rows = self.rows()
            for start in range(0, len(rows), 64):
                yield from rows.take(list(range(start, min(start + 64, len(rows)))), cols)
            return
        if self.files and self.files[0].suffix == ".parquet":
            for f in self.files:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=64, columns=cols):
                    yield from batch.to_pylist()
            return
        ds = self.dataset(streaming=True)
        for c in ("jpg_0", "jpg_1"):  # stored bytes, never decoded images (as HubRows and MappedRows give them)
            if ds.features is not None and isinstance(ds.features.get(c), datasets.Image):
                ds = ds.cast_column(c, datasets.Image(decode=False))
        for row in ds:
            yield {c: canonical_cell(c, row.get(c)) for c in cols}


def file_rows(path: Path) -> int:
    """The number of rows of a Parquet or Arrow file, read from its metadata only (Arrow: counted in batches)."""
    if path.suffix != ".arrow":
        return pq.ParquetFile(path).metadata.num_rows
    with pa.memory_map(str(path)) as f:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(f))


def file_columns(path: Path) -> list[str]:
    """The column names of a Parquet or Arrow (`datasets` cache format) file, read from its schema only."""
    try:
        if path.suffix != ".arrow":
            return pq.read_schema(path).names
        with pa.memory_map(str(path)) as f:
            return pa.ipc.open_stream(f).schema.names
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for broken files
        kind = "Arrow" if path.suffix == ".arrow" else "Parquet"
        raise DataError(f"{path} is not a readable {kind} file ({e}); remove or replace it") from None


# ---------------------------------------------------------------------------------------------------------------
# The registry

@dataclass(frozen=True)
class PairSource:
    """One layout of preference pairs. `columns`: those it detects a target by (named when no source reads a
    target; empty for a source that detects by something else, such as a manifest)."""

    name: str
    help: str
    title: str  # the layout's name in messages
    columns: tuple[str, ...]
    detect: Callable[[str], bool]
    open: Callable[[str, Opening], PairTable]
    fallback: bool = False  # asked after every other source (the Pick-a-Pic source takes any hub id)
    unpaired: bool = False  # one labelled image per row (UNPAIRED_COLUMNS): what an unpaired loss trains on


SOURCES: Registry[PairSource] = Registry("pair source")  # tried in registration order
register = SOURCES.register


def source_for(target: str) -> PairSource:
    """The first source that reads `target` (fallback sources last), or a DataError saying what each lacks."""
    for source in sorted(SOURCES.values(), key=lambda s: s.fallback):  # a stable sort keeps registration order
        if source.detect(target):
            return source
    raise unknown_layout(target)


def open_pairs(target: str, split: str | None = None, *, labels: bool = True, streaming: bool = False,
               hub_split: str | None = None, unpaired: bool = False, columns: dict[str, str] | None = None,
               pairing: str = "all") -> PairTable:
    """Open `target` (path or hub id) with the source that reads it (the `columns` source when a --columns mapping
    is given), and check its columns (labels too if asked). unpaired: the caller trains on single labelled images
    (an unpaired loss), so `target` must hold those."""
    if not Path(target).expanduser().exists() and not is_hub_id(target):
        raise DataError(f"'{target}' is neither a local path nor a hub dataset id (org/name): no such file or "
                        f"directory. Fix: check the path, or pass a hub id such as {OPEN_PREFERENCES}")
    how = Opening(split, streaming, hub_split, columns or None, pairing, labels)
    source = check_layout(target, unpaired, columns)
    table = source.open(target, how)
    table.require(UNPAIRED_COLUMNS if unpaired else PAIR_COLUMNS + (LABEL_COLUMNS if labels else ()))
    return table


def check_layout(target: str, unpaired: bool, columns: Any = None) -> PairSource:
    """The source that reads `target`, which must hold unpaired images if `unpaired`, else pairs (reads no rows:
    `aif train` checks it before loading the model); with a --columns mapping, the `columns` source."""
    if columns and unpaired:
        raise DataError(f"--columns maps preference pairs, but an unpaired loss reads single labelled images "
                        f"({', '.join(UNPAIRED_COLUMNS)}). Fix: drop --columns, or use a paired loss")
    if columns:
        return SOURCES[MAPPED]
    source = source_for(target)
    if source.unpaired != unpaired:
        raise layout_mismatch(target, source)
    return source


def layout_mismatch(target: str, source: PairSource) -> DataError:
    """The error for pairs given to an unpaired loss, or unpaired images given where pairs are needed."""
    from aifeedback.losses import LOSSES

    unpaired = ", ".join(n for n, loss in LOSSES.items() if loss.unpaired)
    paired = ", ".join(n for n, loss in LOSSES.items() if not loss.unpaired)
    if source.unpaired:
        return DataError(f"{target} holds unpaired images ({', '.join(UNPAIRED_COLUMNS)}: one image per row), but "
                         f"this needs preference pairs. Fix: train on it with an unpaired loss (--loss {unpaired}), "
                         "or pass pairs (the `aif score` output folder itself, or Pick-a-Pic-layout data)")
    return DataError(f"{target} holds preference pairs ({source.title} layout), but an unpaired loss ({unpaired}) "
                     f"trains on single images labelled desirable or not ({', '.join(UNPAIRED_COLUMNS)}). Fix: "
                     "score with `aif score --unpaired` and pass its OUT/unpaired folder, or use a paired loss "
                     f"(--loss {paired})")


def unknown_layout(target: str) -> DataError:
    """The error for a target no source reads: the columns it has, and what each source lacks."""
    path = Path(target).expanduser()
    files = data_files(path) if path.exists() else []
    if not files:
        return DataError(f"{target} holds no .parquet or .arrow files. Fix: pass a folder or file of preference "
                         f"pairs in the Pick-a-Pic layout ({', '.join(PAIR_COLUMNS + LABEL_COLUMNS)})")
    have = file_columns(files[0])
    by_columns = [s for s in SOURCES.values() if s.columns]
    lacks = {s.name: [c for c in s.columns if c not in have] for s in by_columns}
    # a tie: name a pair layout, the last registered (Pick-a-Pic) first
    closest = min(by_columns[::-1], key=lambda s: (len(lacks[s.name]), s.unpaired))
    per = "; ".join(f"{name}: {', '.join(m)}" for name, m in lacks.items())
    return DataError(f"{target} lacks the {closest.title} column(s) {', '.join(lacks[closest.name])} "
                     f"(it has: {', '.join(have)}), so no pair source reads it; per source it lacks columns: {per}. "
                     f"Fix: pass --columns {suggest(have)} (naming its columns), or rename its columns to one "
                     "layout's names")


# ---------------------------------------------------------------------------------------------------------------
# The sources

def _is_output(target: str) -> bool:
    return (Path(target).expanduser() / MANIFEST).is_file()


def _open_output(target: str, how: Opening) -> PairTable:
    """An `aif score` output: its pairs are data/train-*.parquet (not image_scores/); --split does not apply."""
    path = Path(target).expanduser()
    stage = read_json(path / MANIFEST).get("stage")
    if stage == "rl":  # an `aif rl` run: the best-vs-worst pair of each epoch's groups (stages/rl_outputs.py)
        files = shard_files(path / RL_PAIRS_DIR)
        if not files:
            raise DataError(f"{path} has no {RL_PAIRS_DIR}/data/train-*.parquet shards: the `aif rl` run finished no "
                            "epoch yet (or predates rollout pairs); run `aif rl` for at least one epoch")
        return PairTable(str(path), "aif-score", files)
    if stage != "score":
        raise DataError(f"{path} holds a '{stage}' output; it needs labelled pairs: an `aif score` or `aif rl` output "
                        f"or Pick-a-Pic-layout Parquet files")
    manifest = read_manifest(path, "score")
    files = shard_files(path)
    if not files:
        raise DataError(f"{path} has no data/train-*.parquet shards: the `aif score` run did not finish; rerun it")
    return PairTable(str(path), "aif-score", files, manifest=manifest)


def _is_pickapic(target: str) -> bool:
    path = Path(target).expanduser()
    if not path.exists():
        return True  # a hub id (check_dataset refused anything else): its columns are checked once it is loaded
    if _saved(path):
        return True
    files = data_files(path)
    return bool(files) and all(c in file_columns(files[0]) for c in PAIR_COLUMNS)


def _saved(path: Path) -> bool:
    """A `Dataset.save_to_disk` folder."""
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _open_pickapic(target: str, how: Opening) -> PairTable:
    """Pick-a-Pic layout: a local Parquet/Arrow file or folder, a save_to_disk folder, or a hub id."""
    path = Path(target).expanduser()
    if not path.exists():
        return _open_hub(target, how)
    if _saved(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if how.split not in ds:
                raise DataError(f"{path} has splits {', '.join(ds)}, not '{how.split}'. Fix: pass --split")
            ds = ds[how.split]
        return PairTable(str(path), "pickapic", ds=ds.to_iterable_dataset() if how.streaming else ds)
    files = split_files(path, data_files(path), how.split)
    have = [file_columns(f) for f in files]
    for f, names in zip(files, have, strict=True):  # every file, naming the one that lacks a column
        require_columns(str(f), names, PAIR_COLUMNS + (LABEL_COLUMNS if how.labels else ()))
    if not any(file_rows(f) for f in files):
        return PairTable(str(path), "pickapic", files)  # nothing to map: dataset() says there are no rows
    # read in place through the canonical mapping, as a mapped layout: the same cells for train, score and inspect
    common = [c for c in have[0] if all(c in h for h in have)]
    return _in_place(path, files, "pickapic", canonical_mapping(common), first_wins=False)


def _is_trl(target: str) -> bool:
    """Local files with TRL's columns (and not Pick-a-Pic's, which win when a file has both). A hub id is left to
    the Pick-a-Pic fallback: its columns are known only once loaded (download it and pass the folder)."""
    path = Path(target).expanduser()
    files = data_files(path) if path.exists() else []
    have = file_columns(files[0]) if files else []
    return all(c in have for c in TRL_COLUMNS) and not all(c in have for c in PAIR_COLUMNS)


def _open_trl(target: str, how: Opening) -> PairTable:
    """TRL layout in a local Parquet/Arrow file or folder, mapped to the canonical columns (aifeedback.data.trl);
    image paths are resolved inside the folder (a file's own folder for a single file)."""
    path = Path(target).expanduser()
    files = split_files(path, data_files(path), how.split)
    if not any(file_rows(f) for f in files):
        raise DataError(f"no usable preference pairs in {path}: its {len(files)} file(s) hold no rows. Fix: pass a "
                        "dataset with labelled pairs")
    for f in files:  # every file, not just the first: the check names the one that lacks a column
        require_columns(str(f), file_columns(f), TRL_COLUMNS, "TRL")
    return _in_place(path, files, "trl", TRL_MAPPING, first_wins=True)


def _in_place(path: Path, files: list[Path], source: str, mapping: dict[str, str], first_wins: bool) -> PairTable:
    """Local files of another layout, read in place and mapped row by row (`MappedRows`: nothing is copied into the
    `datasets` cache). Every image path is checked now (light: the paths, not the images), so a path outside the
    folder or a missing file is refused naming its row before any step runs; images are read when a pair is used."""
    root = path if path.is_dir() else path.parent
    table = PairTable(str(path), source, files, mapping=mapping, root=root, first_wins=first_wins)
    rows = ParquetRows(files, str(path))
    for column in (mapping["image_0"], mapping["image_1"]):
        if rows.schema.field(column).type in (pa.string(), pa.large_string()):  # paths (Image structs: when read)
            for i, value in enumerate(rows.column(column)):
                check_path(value, root, lambda i=i, c=column: f"{rows.where(i)} ({c})")
    return table


def _is_unpaired(target: str) -> bool:
    """Local files with the unpaired columns (and not the Pick-a-Pic pair columns, which win when a file has both)."""
    path = Path(target).expanduser()
    files = data_files(path) if path.exists() else []
    have = file_columns(files[0]) if files else []
    return all(c in have for c in UNPAIRED_COLUMNS) and not all(c in have for c in PAIR_COLUMNS)


def _open_unpaired(target: str, how: Opening) -> PairTable:
    """Unpaired images in a local Parquet/Arrow file or folder (`aif score --unpaired` writes OUT/unpaired/)."""
    path = Path(target).expanduser()
    return PairTable(str(path), "unpaired", split_files(path, data_files(path), how.split))


def _open_hub(name: str, how: Opening) -> PairTable:
    split = how.split or how.hub_split
    label = f"{name}[{split or 'default split'}]"
    try:
        if split:
            ds = datasets.load_dataset(name, split=split, streaming=how.streaming)
        else:
            dd = datasets.load_dataset(name, streaming=how.streaming)
    except Exception as e:  # datasets raises many types (not found, offline, bad split): all the user's input
        first = first_line(e)
        raise DataError(
            f"could not load the dataset '{name}'{f' split {split}' if split else ''}: {first}.\n"
            f"  Fix: check the id and --split (kashif/pickascore: validation; Pick-a-Pic v2 copies: train, validation, "
            f"test, validation_unique, test_unique), or download it (`hf download --repo-type dataset ID`) and pass "
            f"the local folder. yuvalkirstain/pickapic_v2 answers 404 on the Hub since April 2025: pass a local "
            f"Parquet copy of it, or another set such as {OPEN_PREFERENCES}."
        ) from None
    if split:
        return _hub_table(label, ds, how)
    if len(dd) != 1:
        raise DataError(f"dataset '{name}' has splits {', '.join(dd)}; choose one with --split")
    return _hub_table(label, next(iter(dd.values())), how)


def _hub_table(label: str, ds: Any, how: Opening) -> PairTable:
    """A loaded hub dataset as pairs: mapped by --columns, else TRL's columns mapped, else Pick-a-Pic's as they are
    (a hub dataset's layout is known only once it is loaded)."""
    have = list(ds.column_names) if ds.column_names is not None else None
    if how.columns:
        check_mapping(how.columns, have, label, how.labels)
        return PairTable(label, MAPPED, ds=map_columns(ds, how.columns, None, label))
    if have is not None and any(c in have for c in hub_sources.WDS_FIELDS["jpg_0"]):  # data/hub_sources.py
        return PairTable(label, "pickapic-wds", ds=hub_sources.wds_canonical(ds, label, how.labels))
    if have is not None and all(c in have for c in TRL_COLUMNS) and not all(c in have for c in PAIR_COLUMNS):
        return PairTable(label, "trl", ds=map_columns(ds, TRL_MAPPING, None, label, first_wins=True))
    return PairTable(label, "pickapic", ds=ds)


# ---------------------------------------------------------------------------------------------------------------
# Ranked lists (aifeedback.data.ranked) and the user's --columns mapping (aifeedback.data.mapping)

def _is_hpdv2(target: str) -> bool:
    return bool(ranked.hpd_files(Path(target).expanduser()))


def _open_hpdv2(target: str, how: Opening) -> PairTable:
    """HPDv2 annotation files (train.json, test.json) made pairs; each file's images under its own split folder."""
    path = Path(target).expanduser()
    files = split_files(path, ranked.hpd_files(path), how.split)
    tables = []
    for f in files:
        groups = ranked.hpd_groups(f)
        if groups:
            tables.append(ranked.pairs_table(groups, how.pairing, ranked.hpd_image_root(f), ranked.file_stamp(f)))
    if not tables:
        raise DataError(f"no usable preference pairs in {path}: {', '.join(map(str, files))} hold no records. Fix: "
                        "pass HPDv2's train.json or test.json with their image folders")
    ds = tables[0] if len(tables) == 1 else datasets.concatenate_datasets(tables)
    resolver = ranked.Resolver()
    return PairTable(str(path), "hpdv2", ds=ds.with_transform(resolver), lazy=resolver)


def _is_imagereward(target: str) -> bool:
    path = Path(target).expanduser()
    files = data_files(path) if path.exists() else []
    have = file_columns(files[0]) if files else []
    return all(c in have for c in ranked.IMAGEREWARD_COLUMNS) and ("image_path" in have or "image" in have)


def _open_imagereward(target: str, how: Opening) -> PairTable:
    """ImageRewardDB tables: metadata-SPLIT.parquet (images by path) or an export with an `image` column."""
    path = Path(target).expanduser()
    files = data_files(path)
    named = [f for f in files if how.split and f.name.split(".")[0].endswith(f"-{how.split}")]
    files = named or split_files(path, files, how.split)
    for f in files:
        require_columns(str(f), file_columns(f), ranked.IMAGEREWARD_COLUMNS, "ImageRewardDB")
    counts = [file_rows(f) for f in files]
    if not any(counts):
        raise DataError(f"no usable preference pairs in {path}: its {len(files)} file(s) hold no rows")
    ds = datasets.load_dataset(files[0].suffix[1:], data_files=[str(f) for f in files], split="train")
    groups, column = ranked.imagereward_groups(ds, files, counts)
    root = path if path.is_dir() else path.parent
    key = " ".join(ranked.file_stamp(f) for f in files)
    images = ds if column == "image" else None
    table = ranked.pairs_table(groups, how.pairing, root, key, images=images)
    resolver = ranked.Resolver(images)
    return PairTable(str(path), "imagerewarddb", ds=table.with_transform(resolver), lazy=resolver)


def _open_mapped(target: str, how: Opening) -> PairTable:
    """Any layout, mapped by --columns: local Parquet/Arrow files (image paths inside the folder) or a hub id."""
    path = Path(target).expanduser()
    if not path.exists():
        return _open_hub(target, how)
    files = split_files(path, data_files(path), how.split)
    if not files:
        raise DataError(f"{path} holds no .parquet or .arrow files. Fix: pass a folder or file of preference pairs")
    for f in files:
        check_mapping(how.columns, file_columns(f), str(f), how.labels)
    if not any(file_rows(f) for f in files):
        raise DataError(f"no usable preference pairs in {path}: its {len(files)} file(s) hold no rows")
    return _in_place(path, files, MAPPED, how.columns, first_wins=False)


def _open_hpdv3(target: str, how: Opening) -> PairTable:
    """HPDv3 JSON files (data/hub_sources.py), one pair per record, path1 preferred."""
    path = Path(target).expanduser()
    ds, resolver = hub_sources.hpdv3_table(path, split_files(path, hub_sources.hpdv3_files(path), how.split))
    return PairTable(str(path), "hpdv3", ds=ds, lazy=resolver)


def _is_wds(target: str) -> bool:
    """Pick-a-Pic WebDataset shards: a .tar file, or a folder of them with no Parquet/Arrow file (which would win)."""
    path = Path(target).expanduser()
    return not (path.is_dir() and data_files(path)) and hub_sources.is_pickapic_wds(path)


def _open_wds(target: str, how: Opening) -> PairTable:
    """Pick-a-Pic v2 in local WebDataset tar shards (data/hub_sources.py), streamed when the consumer streams."""
    path = Path(target).expanduser()
    files = split_files(path, hub_sources.wds_files(path), how.split)
    return PairTable(str(path), "pickapic-wds", ds=hub_sources.wds_table(path, files, how.streaming, how.labels))


MAPPED = "columns"
register(PairSource("aif-score", "an `aif score` output: manifest.json + data/train-*.parquet pairs (an `aif rl` "
                    "output: its pairs/ folder)",
                    "`aif score` output", (), _is_output, _open_output))
register(PairSource("hpdv2", "HPDv2 annotation JSON (prompt + file_path + human_preference, or prompt + image_path "
                    "+ rank) with its image folders; ranked lists made pairs (--ranked-pairs)", "HPDv2", (),
                    _is_hpdv2, _open_hpdv2))
register(PairSource("hpdv3", "HPDv3 JSON (prompt, path1 = the preferred image, path2; MizzenAI/HPDv3 train.json, "
                    "test.json) with its extracted images, paths relative to the JSON file's folder", "HPDv3", (),
                    lambda t: bool(hub_sources.hpdv3_files(Path(t).expanduser())), _open_hpdv3))
register(PairSource("pickapic-wds", "Pick-a-Pic v2 as WebDataset .tar shards ({key}.jpg_0.jpg, jpg_1.jpg, "
                    "label_0.txt, label_1.txt, original_prompt.txt: sayakpaul/pickapic_v2_webdataset), local or hub",
                    "Pick-a-Pic WebDataset", (), _is_wds, _open_wds))
register(PairSource("imagerewarddb", "ImageRewardDB tables (prompt_id, prompt, rank, image_path or image: one row "
                    "per image); ranked lists made pairs (--ranked-pairs)", "ImageRewardDB",
                    ranked.IMAGEREWARD_COLUMNS, _is_imagereward, _open_imagereward))
register(PairSource("unpaired", "caption, jpg, desirable (one image per row, for --loss kto): `aif score --unpaired`'s "
                    "OUT/unpaired folder or any local Parquet/Arrow file or folder", "unpaired",
                    UNPAIRED_COLUMNS, _is_unpaired, _open_unpaired, unpaired=True))
register(PairSource("trl", "prompt, chosen, rejected (images as bytes, `datasets` Images or paths inside the "
                    "folder): a local Parquet/Arrow file or folder", "TRL", TRL_COLUMNS, _is_trl, _open_trl))
register(PairSource("pickapic", "caption, jpg_0, jpg_1, label_0, label_1: a local Parquet/Arrow file or folder, "
                    "a save_to_disk folder, or a hub id", "Pick-a-Pic", PAIR_COLUMNS, _is_pickapic, _open_pickapic,
                    fallback=True))
register(PairSource(MAPPED, "any other layout, named by --columns caption=COL,image_0=COL,image_1=COL,label=COL: "
                    "local Parquet/Arrow or a hub id", "--columns", (), lambda target: False, _open_mapped))
