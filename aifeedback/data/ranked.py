"""Ranked lists of images per prompt (HPDv2, ImageRewardDB) as pairs in the canonical columns.

Each prompt's images get a score (higher = preferred); `--ranked-pairs` picks the pairs with `aif score`'s own
rule (aifeedback.scoring.pairing.select_pairs: every pair, or the best against the worst), and a pair's labels
come from the same rule as `aif score`'s (pairing.label with no margin): equal scores are a tie, kept as a
0.5/0.5 row that the one label rule drops and counts. A record whose preferences are not numbers becomes one row
with NaN labels: counted as a bad row, never trained on. The table of pairs is light (captions, labels, image
references); an image is read when its pair is used (`Resolver`), never copied into a cache.

- HPDv2 (ymhao/HPDv2): `train.json` = [{prompt, file_path: [..], human_preference: [1 for the preferred, 0]}],
  `test.json` = [{prompt, image_path: [..], rank: [..] (1 = best), raw_annotations}]. Image paths are relative to
  the folder named like the JSON file (train/ for train.json) when it exists, else to the JSON file's folder.
- ImageRewardDB (THUDM/ImageRewardDB): one row per image, in `metadata-SPLIT.parquet` (image_path relative to the
  dataset folder) or a Parquet/Arrow export with an `image` column; rows of one prompt_id form a list, `rank` 1 is
  the best.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import datasets

from aifeedback.data.labels import RANKED_PAIRINGS
from aifeedback.data.trl import inside_path
from aifeedback.errors import DataError
from aifeedback.scoring.pairing import label, select_pairs

__all__ = ["RANKED_PAIRINGS", "Group", "Resolver", "pair_rows", "pairs_table"]
HPD_KEYS = (("file_path", "human_preference"), ("image_path", "rank"))  # (images, preference) per HPDv2 file
IMAGEREWARD_COLUMNS = ("prompt_id", "prompt", "rank")
LIGHT = datasets.Features({"caption": datasets.Value("string"), "where": datasets.Value("string"),
                           "label_0": datasets.Value("float64"), "label_1": datasets.Value("float64")})


@dataclass
class Group:
    """One prompt's images (path strings or row numbers of an image table) and their scores (higher = preferred;
    None: the record's preferences are not numbers)."""

    caption: str
    images: list[Any]
    scores: list[float] | None
    where: str


def pair_rows(groups: list[Group], how: str) -> Iterator[dict[str, Any]]:
    """The pairs of each group (see the module docstring)."""
    nan = float("nan")
    for g in groups:
        if g.scores is None:
            yield {"caption": g.caption, "image_0": None, "image_1": None, "label_0": nan, "label_1": nan,
                   "where": g.where}
            continue
        for i, j in select_pairs(g.scores, how):
            l0, l1 = label(g.scores[i], g.scores[j], 0.0) or (0.5, 0.5)
            yield {"caption": g.caption, "image_0": g.images[i], "image_1": g.images[j], "label_0": l0, "label_1": l1,
                   "where": f"{g.where} images {i} and {j}"}


def _scores(values: Any, negate: bool) -> list[float] | None:
    try:
        return [-float(v) if negate else float(v) for v in values]
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# HPDv2

def hpd_kind(text: str) -> tuple[str, str] | None:
    """The (images, preference) keys an HPDv2 JSON file's opening text shows, or None (not HPDv2)."""
    if '"prompt"' not in text:
        return None
    return next((keys for keys in HPD_KEYS if all(f'"{k}"' in text for k in keys)), None)


def file_stamp(path: Path) -> str:
    """A file's path, size and time: the cache key of what is made from it."""
    st = path.stat()
    return f"{path.resolve()} {st.st_size} {st.st_mtime_ns}"


def json_files(path: Path) -> list[Path]:
    """The JSON files of a file or folder, top level only (image folders may hold other JSON files)."""
    if path.is_file():
        return [path] if path.suffix == ".json" else []
    return sorted(path.glob("*.json")) if path.is_dir() else []


def json_opening(file: Path) -> str:
    """The first 4 KB of a JSON file as text: enough to tell its layout by its keys without parsing it (light)."""
    with open(file, encoding="utf-8", errors="replace") as h:
        return h.read(4096)


def json_records(file: Path, layout: str) -> list:
    """The list of records a JSON annotation file holds; an unreadable file or another JSON type is one line naming
    the file and the `layout` expected (e.g. "HPDv2's train.json or test.json")."""
    try:
        records = json.loads(file.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{file} is not a readable JSON file ({e}). Fix: pass {layout}") from None
    if not isinstance(records, list):
        raise DataError(f"{file} holds a JSON {type(records).__name__}, not a list of records. Fix: pass {layout}")
    return records


def hpd_files(path: Path) -> list[Path]:
    """The HPDv2 annotation files of a file or folder, told by the keys in their first 4 KB (light)."""
    return [f for f in json_files(path) if hpd_kind(json_opening(f))]


def hpd_groups(file: Path) -> list[Group]:
    """The records of one HPDv2 annotation file."""
    records = json_records(file, "HPDv2's train.json or test.json")
    groups = []
    for n, rec in enumerate(records):
        where = f"{file} record {n}"
        keys = next((k for k in HPD_KEYS if isinstance(rec, dict) and all(c in rec for c in k)), None)
        if keys is None or "prompt" not in rec:
            have = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
            raise DataError(f"{where} lacks HPDv2's keys (prompt + file_path + human_preference, or prompt + "
                            f"image_path + rank; it has: {have}). Fix: pass HPDv2's own annotation files")
        images, prefs = rec[keys[0]], rec[keys[1]]
        if not isinstance(images, list) or not isinstance(prefs, list) or len(images) != len(prefs):
            raise DataError(f"{where}: {keys[0]} and {keys[1]} must be lists of the same length")
        groups.append(Group(rec["prompt"], images, _scores(prefs, negate=keys[1] == "rank"), where))
    return groups


def hpd_image_root(file: Path) -> Path:
    """Where an HPDv2 file's image paths are relative to: its split folder (train/ for train.json), else its own."""
    split_dir = file.parent / file.stem
    return split_dir if split_dir.is_dir() else file.parent


# ---------------------------------------------------------------------------------------------------------------
# ImageRewardDB

def imagereward_groups(ds: Any, files: list[Path], counts: list[int]) -> tuple[list[Group], str]:
    """ImageRewardDB rows grouped by prompt_id (first appearance order); returns the groups and the image column
    (image_path: paths; image: the images are row numbers of `ds`)."""
    column = "image_path" if "image_path" in ds.column_names else "image"
    light = ds.select_columns([*IMAGEREWARD_COLUMNS] + ([column] if column == "image_path" else [])).to_dict()
    by_id: dict[Any, Group] = {}
    file_of = [(f, r) for f, n in zip(files, counts, strict=True) for r in range(n)]
    for row, pid in enumerate(light["prompt_id"]):
        g = by_id.get(pid)
        if g is None:
            f, r = file_of[row]
            g = by_id[pid] = Group(light["prompt"][row], [], [], f"{f} prompt_id {pid} (from row {r})")
        g.images.append(light[column][row] if column == "image_path" else row)
        score = _scores([light["rank"][row]], negate=True)
        g.scores = None if score is None or g.scores is None else g.scores + score
    return list(by_id.values()), column


# ---------------------------------------------------------------------------------------------------------------
# Groups -> a light table of pairs whose images are read when a pair is used

class Resolver:
    """A batch's image references -> encoded images: a checked absolute path's file, or a row number of the
    `images` table (its `image` column). The `datasets` transform of a ranked table: an image is read when a pair is
    used, so a list's images are never copied (with --ranked-pairs all an image is in many pairs). A file gone since
    the table was opened reads as None: training and scoring count it as unreadable."""

    def __init__(self, images: Any = None):
        if images is not None:
            images = images.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
        self.images = images

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        for c in ("jpg_0", "jpg_1"):
            if c in batch:
                batch[c] = [self.read(ref) for ref in batch[c]]
        return batch

    def read(self, ref: Any) -> bytes | None:
        if ref is None:
            return None
        if isinstance(ref, str):
            try:
                return Path(ref).read_bytes()
            except OSError:
                return None
        return self.images[int(ref)]["image"]["bytes"]


def pairs_table(groups: list[Group], how: str, root: Path | None, key: str, images: Any = None) -> Any:
    """The groups' pairs as a light `datasets` Dataset in the canonical columns, jpg_0/jpg_1 holding image
    references (set a `Resolver` as its transform to read them): absolute paths, checked now (inside `root`, an
    existing file; else an error naming the record), or row numbers of `images`. `key` (the source files' sizes and
    times) and the images' sizes and times name the cached table, so a file replaced in place is read again."""
    if images is None:
        stamp = hashlib.sha256(key.encode())
        groups = [Group(g.caption, [_checked(v, root, f"{g.where} image {n}", stamp) for n, v in enumerate(g.images)],
                        g.scores, g.where) for g in groups]
        key = stamp.hexdigest()
    kind = datasets.Value("int64") if images is not None else datasets.Value("string")
    features = datasets.Features({**LIGHT, "jpg_0": kind, "jpg_1": kind})
    return datasets.Dataset.from_generator(_generate, features=features,
                                           gen_kwargs={"groups": groups, "how": how, "key": key})


def _checked(value: Any, root: Path, where: str, stamp: Any) -> str:
    """An image path of a record as an absolute path inside `root` naming a file (its size and time go into
    `stamp`)."""
    if not isinstance(value, str):
        raise DataError(f"{where} is a {type(value).__name__}, not an image path relative to the dataset folder")
    file = inside_path(value, root, lambda: where)
    try:
        st = file.stat()
    except OSError as e:
        raise DataError(f"{where}: cannot read the image path '{value}' ({e.strerror or e}) under {root}. Fix: "
                        "paths are relative to the dataset folder; check the file is there") from None
    stamp.update(f"{file} {st.st_size} {st.st_mtime_ns}".encode())
    return str(file)


def _generate(groups: list[Group], how: str, key: str) -> Iterator[dict[str, Any]]:
    """from_generator's rows; `key` only makes the cache name depend on the files."""
    for row in pair_rows(groups, how):
        yield {"caption": row["caption"], "jpg_0": row["image_0"], "jpg_1": row["image_1"],
               "label_0": row["label_0"], "label_1": row["label_1"], "where": row["where"]}
