"""Ranked lists of images per prompt (HPDv2, ImageRewardDB) as pairs in the canonical columns.

Each prompt's images get a score (higher = preferred); `--ranked-pairs` picks the pairs with `aif score`'s own
rule (aifeedback.scoring.pairing.select_pairs: every pair, or the best against the worst), and a pair's labels
come from the same rule as `aif score`'s (pairing.label with no margin): equal scores are a tie, kept as a
0.5/0.5 row that the one label rule drops and counts. A record whose preferences are not numbers becomes one row
with NaN labels: counted as a bad row, never trained on.

- HPDv2 (ymhao/HPDv2): `train.json` = [{prompt, file_path: [..], human_preference: [1 for the preferred, 0]}],
  `test.json` = [{prompt, image_path: [..], rank: [..] (1 = best), raw_annotations}]. Image paths are relative to
  the folder named like the JSON file (train/ for train.json) when it exists, else to the JSON file's folder.
- ImageRewardDB (THUDM/ImageRewardDB): one row per image, in `metadata-SPLIT.parquet` (image_path relative to the
  dataset folder) or a Parquet/Arrow export with an `image` column; rows of one prompt_id form a list, `rank` 1 is
  the best.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import datasets

from aifeedback.data.labels import RANKED_PAIRINGS
from aifeedback.data.mapping import map_columns
from aifeedback.errors import DataError
from aifeedback.scoring.pairing import label, select_pairs

__all__ = ["RANKED_PAIRINGS", "Group", "pair_rows", "pairs_table"]
HPD_KEYS = (("file_path", "human_preference"), ("image_path", "rank"))  # (images, preference) per HPDv2 file
IMAGEREWARD_COLUMNS = ("prompt_id", "prompt", "rank")
LIGHT = datasets.Features({"caption": datasets.Value("string"), "where": datasets.Value("string"),
                           "label_0": datasets.Value("float64"), "label_1": datasets.Value("float64")})
PAIR_MAPPING = {"caption": "caption", "image_0": "image_0", "image_1": "image_1", "label_0": "label_0",
                "label_1": "label_1"}


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


def hpd_groups(file: Path) -> list[Group]:
    """The records of one HPDv2 annotation file."""
    try:
        records = json.loads(file.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{file} is not a readable JSON file ({e}). Fix: pass HPDv2's train.json or "
                        "test.json") from None
    if not isinstance(records, list):
        raise DataError(f"{file} holds a JSON {type(records).__name__}, not HPDv2's list of records")
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
# Groups -> a table of canonical pairs

def pairs_table(groups: list[Group], how: str, root: Path, key: str, images: Any = None) -> Any:
    """A `datasets` Dataset of the groups' pairs in the canonical columns. `key` (files and their sizes and times)
    names the cached light table; `images`: the table whose `image` column the row numbers point into."""
    kind = datasets.Value("int64") if images is not None else datasets.Value("string")
    features = datasets.Features({**LIGHT, "image_0": kind, "image_1": kind})
    light = datasets.Dataset.from_generator(_generate, features=features,
                                            gen_kwargs={"groups": groups, "how": how, "key": key})
    if images is not None:
        light = _fetch_images(light, images)
    return map_columns(light, PAIR_MAPPING, root, key)


def _generate(groups: list[Group], how: str, key: str) -> Iterator[dict[str, Any]]:
    """from_generator's rows; `key` only makes the cache name depend on the source files."""
    yield from pair_rows(groups, how)


def _fetch_images(light: Any, images: Any) -> Any:
    """Row numbers -> the image table's stored images ({'bytes', 'path'}), read batch by batch."""
    images = images.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    kind = datasets.Image(decode=False)
    features = datasets.Features({**LIGHT, "image_0": kind, "image_1": kind})

    def fetch(batch: dict[str, list]) -> dict[str, list]:
        for c in ("image_0", "image_1"):
            rows = [r for r in batch[c] if r is not None]
            found = iter(images[rows]["image"]) if rows else iter(())
            batch[c] = [next(found) if r is not None else None for r in batch[c]]
        return batch

    return light.map(fetch, batched=True, features=features, new_fingerprint=f"{light._fingerprint}-images",
                     desc="ranked images")
