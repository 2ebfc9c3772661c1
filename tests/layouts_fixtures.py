"""Small local datasets in the layouts the pair sources read besides Pick-a-Pic's and TRL's: HPDv2-style JSON with
image paths, ImageRewardDB-style ranks (by path or with an `image` column) and a custom layout for --columns; and
the Pick-a-Pic layout stored as other tools store it (`datasets` Image structs, labels as text, image paths inside
the folder, a save_to_disk folder). The red image is always the preferred one, as in tests.pairs_fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.pairs_fixtures import WORDS, image_bytes, pickapic_rows

RED, BLUE, GREEN = (200, 40, 40), (40, 40, 200), (40, 160, 40)


def _image(folder: Path, rel: str, rgb: tuple[int, int, int], seed: int) -> str:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(image_bytes(rgb, (24, 20), seed))
    return rel


def write_hpdv2(folder: Path, n: int = 4, test_n: int = 2) -> Path:
    """train.json (pairs: human_preference 1 on the red image, on alternating sides; paths relative to train/)
    and test.json (three images ranked red 1, green 2, blue 2: one tie; paths relative to test/)."""
    train = []
    for i in range(n):
        red, blue = _image(folder / "train", f"{i}-r.jpg", RED, 2 * i), _image(folder / "train", f"{i}-b.jpg", BLUE,
                                                                               2 * i + 1)
        first = i % 2 == 0
        train.append({"human_preference": [1, 0] if first else [0, 1], "prompt": f"{WORDS[i % 10]} {i}",
                      "file_path": [red, blue] if first else [blue, red]})
    test = []
    for i in range(test_n):
        paths = [_image(folder / "test", f"{i}-{c}.jpg", rgb, 100 + 3 * i + k)
                 for k, (c, rgb) in enumerate((("g", GREEN), ("r", RED), ("b", BLUE)))]
        test.append({"prompt": f"test {i}", "image_path": paths, "rank": [2, 1, 2], "raw_annotations": []})
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    return folder


def imagereward_rows(folder: Path, prompts: int = 3, split: str = "train") -> list[dict]:
    """ImageRewardDB rows: per prompt a red (rank 1), a blue (rank 2) and a green image (rank 2: ties the blue)."""
    rows = []
    for p in range(prompts):
        for k, (c, rgb, rank) in enumerate((("b", BLUE, 2), ("r", RED, 1), ("g", GREEN, 2))):
            rel = _image(folder, f"images/{split}/{split}_1/{p}-{c}.webp", rgb, 10 * p + k)
            rows.append({"image_path": rel, "prompt_id": f"{p:06d}-0001", "prompt": f"{WORDS[p % 10]} prompt {p}",
                         "classification": "Things", "image_amount_in_total": 3, "rank": rank, "overall_rating": 4})
    return rows


def write_imagereward(folder: Path, prompts: int = 3, kind: str = "paths") -> Path:
    """metadata-train.parquet with image_path (kind 'paths'), or data/train.parquet with an `image` column."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    rows = imagereward_rows(folder, prompts)
    if kind == "paths":
        pq.write_table(pa.Table.from_pylist(rows), folder / "metadata-train.parquet")
        pq.write_table(pa.Table.from_pylist(imagereward_rows(folder, 1, "test")), folder / "metadata-test.parquet")
        return folder
    for r in rows:
        r["image"] = {"bytes": (folder / r.pop("image_path")).read_bytes(), "path": None}
    (folder / "data").mkdir()
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def write_custom(folder: Path, n: int = 4) -> Path:
    """A layout no source detects: text, left (bytes), right (a path inside the folder) and winner ('left'/'right'
    as the column names, "tie" for one)."""
    rows = []
    for i in range(n):
        red, blue = image_bytes(RED, (24, 20), 50 + i), _image(folder, f"pics/{i}.png", BLUE, 60 + i)
        rows.append({"text": f"{WORDS[i % 10]} custom {i}", "left": red, "right": blue,
                     "winner": "left" if i else "tie"})
    pq.write_table(pa.Table.from_pylist(rows), folder / "pairs.parquet")
    return folder


PICKAPIC_KINDS = ("image", "text-labels", "paths", "image-paths", "saved")


def write_pickapic_as(folder: Path, kind: str, n: int = 4) -> Path:
    """Pick-a-Pic columns stored as: `datasets` Image structs ("image"), labels as text "1.0"/"0.0"
    ("text-labels"), image paths relative to the folder as text ("paths") or in Image structs ("image-paths"), a
    `Dataset.save_to_disk` folder with Image features ("saved")."""
    import datasets

    rows = pickapic_rows(n)
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("paths", "image-paths"):
        for i, r in enumerate(rows):
            for c in ("jpg_0", "jpg_1"):
                rel = f"images/{i}-{c}.jpg"
                (folder / "images").mkdir(exist_ok=True)
                (folder / rel).write_bytes(r[c])
                r[c] = rel if kind == "paths" else {"bytes": None, "path": rel}
    if kind == "text-labels":
        rows = [dict(r, label_0=str(r["label_0"]), label_1=str(r["label_1"])) for r in rows]
    if kind in ("image", "saved"):
        features = datasets.Features({"caption": datasets.Value("string"), "jpg_0": datasets.Image(),
                                      "jpg_1": datasets.Image(), "label_0": datasets.Value("float64"),
                                      "label_1": datasets.Value("float64"), "ranking_id": datasets.Value("int64")})
        ds = datasets.Dataset.from_list([dict(r, jpg_0={"bytes": r["jpg_0"], "path": None},
                                              jpg_1={"bytes": r["jpg_1"], "path": None}) for r in rows],
                                        features=features)
        if kind == "saved":
            ds.save_to_disk(str(folder))
        else:
            ds.to_parquet(str(folder / "train.parquet"))
        return folder
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    return folder


def write_hpdv3(folder: Path, n: int = 4, name: str = "train.json", prefix: str = "") -> Path:
    """HPDv3's layout: NAME = [{prompt, path1 (preferred: red), path2 (blue), confidence, choice_dist, model1,
    model2}], images under images/ next to it (as `cat images.tar.gz.* | gunzip | tar -x` leaves them)."""
    records, seed = [], 300 + 100 * sum(map(ord, prefix))  # another prefix: other images
    for i in range(n):
        red = _image(folder, f"images/{prefix}{i}/r.jpg", RED, seed + 2 * i)
        blue = _image(folder, f"images/{prefix}{i}/b.jpg", BLUE, seed + 2 * i + 1)
        records.append({"prompt": f"{prefix}{WORDS[i % 10]} {i}", "path1": red, "path2": blue, "confidence": 0.9,
                        "choice_dist": [3, 1], "model1": "flux", "model2": "kolors"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(records))
    return folder


def write_pickapic_wds(folder: Path, n: int = 4, shards: int = 2, caption: str = "original_prompt") -> Path:
    """Pick-a-Pic v2 as sayakpaul/pickapic_v2_webdataset stores it: tar shards 00000.tar, ... of samples
    {key}.jpg_0.jpg, {key}.jpg_1.jpg, {key}.label_0.txt, {key}.label_1.txt ("1.0"/"0.0"), {key}.original_prompt.txt;
    the red image wins (on a random side, as tests.pairs_fixtures.pickapic_rows)."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    rows = pickapic_rows(n)
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per, min(n, (s + 1) * per)):
                r = rows[i]
                fields = {"jpg_0.jpg": r["jpg_0"], "jpg_1.jpg": r["jpg_1"], f"{caption}.txt": r["caption"].encode(),
                          "label_0.txt": f"{r['label_0']:.1f}".encode(), "label_1.txt": f"{r['label_1']:.1f}".encode()}
                for field, data in fields.items():
                    info = tarfile.TarInfo(f"{i}.{field}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder
