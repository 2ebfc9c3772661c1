"""The TRL preference source (aifeedback.data.trl): prompt/chosen/rejected with images as bytes, `datasets` Images
or relative paths, read by train, score and eval through the one pair reader; paths never leave the folder."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifeedback.data import sources as S
from aifeedback.errors import DataError
from tests.pairs_fixtures import pickapic_rows


def trl_rows(n: int, seed: int = 0) -> list[dict]:
    """n TRL rows (winner first) from the Pick-a-Pic fixture: the red image is always chosen."""
    out = []
    for r in pickapic_rows(n, seed):
        win = 0 if r["label_0"] == 1.0 else 1
        out.append({"prompt": r["caption"], "chosen": r[f"jpg_{win}"], "rejected": r[f"jpg_{1 - win}"], "id": 7})
    return out


def write_trl(folder, rows: list[dict], kind: str):
    """A TRL folder: images as raw bytes, as a `datasets` Image feature, or as relative paths (images/ beside)."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "bytes":
        pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    elif kind == "image":
        features = datasets.Features({"prompt": datasets.Value("string"), "chosen": datasets.Image(),
                                      "rejected": datasets.Image(), "id": datasets.Value("int64")})
        datasets.Dataset.from_list([dict(r, chosen={"bytes": r["chosen"], "path": None},
                                         rejected={"bytes": r["rejected"], "path": None}) for r in rows],
                                   features=features).to_parquet(str(folder / "train.parquet"))
    else:
        (folder / "images").mkdir()
        paths = []
        for i, r in enumerate(rows):
            for c in ("chosen", "rejected"):
                (folder / "images" / f"{i}-{c}.jpg").write_bytes(r[c])
            paths.append(dict(r, chosen=f"images/{i}-chosen.jpg", rejected=f"./images/{i}-rejected.jpg"))
        (folder / "data").mkdir()
        pq.write_table(pa.Table.from_pylist(paths), folder / "data" / "train-00000-of-00001.parquet")
    return folder


@pytest.mark.parametrize("kind", ["bytes", "image", "paths"])
def test_each_image_representation_reads_as_canonical_pairs(tmp_path, kind):
    rows = trl_rows(3)
    folder = write_trl(tmp_path / kind, rows, kind)
    assert S.source_for(str(folder)).name == "trl"
    table = S.open_pairs(str(folder), "train")
    ds = table.dataset()
    assert table.source == "trl" and set(S.PAIR_COLUMNS) <= set(ds.column_names) and "id" in ds.column_names
    assert [(r["caption"], r["jpg_0"], r["jpg_1"], r["label_0"], r["label_1"]) for r in ds] == \
        [(r["prompt"], r["chosen"], r["rejected"], 1.0, 0.0) for r in rows]
    streamed = list(S.open_pairs(str(folder), streaming=True).iter_rows(["caption", "jpg_0", "label_0"]))
    assert streamed == [{"caption": r["prompt"], "jpg_0": r["chosen"], "label_0": 1.0} for r in rows]


def test_one_file_and_the_pickapic_layout_are_told_apart(tmp_path):
    folder = write_trl(tmp_path / "one", trl_rows(2), "bytes")
    assert S.source_for(str(folder / "train.parquet")).name == "trl"
    both = tmp_path / "both"  # Pick-a-Pic's columns win when a file has both layouts
    both.mkdir()
    pq.write_table(pa.Table.from_pylist([dict(p, prompt="x", chosen=b"", rejected=b"") for p in pickapic_rows(1)]),
                   both / "a.parquet")
    assert S.source_for(str(both)).name == "pickapic"
    assert S.source_for("org/trl-set").name == "pickapic"  # a hub id: left to the fallback (columns known once loaded)


def test_a_path_outside_the_folder_is_refused_naming_the_row(tmp_path):
    folder = write_trl(tmp_path / "set", trl_rows(3), "paths")
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    shard = folder / "data" / "train-00000-of-00001.parquet"
    rows = pq.read_table(shard).to_pylist()
    rows[2]["rejected"] = "../secret.jpg"
    pq.write_table(pa.Table.from_pylist(rows), shard)
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet row 2 \(rejected\): the image path "
                                        r"'../secret.jpg' lies outside the dataset folder"):
        S.open_pairs(str(folder))
    (folder / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")  # a link pointing out is refused too
    rows[2]["rejected"] = "images/link.jpg"
    pq.write_table(pa.Table.from_pylist(rows), shard)
    with pytest.raises(DataError, match=r"row 2 \(rejected\): the image path 'images/link.jpg' lies outside"):
        S.open_pairs(str(folder))
    rows[2]["rejected"] = "images/gone.jpg"
    pq.write_table(pa.Table.from_pylist(rows), shard)
    with pytest.raises(DataError, match=r"row 2 \(rejected\): cannot read the image path 'images/gone.jpg'"):
        S.open_pairs(str(folder))


def test_a_bad_trl_layout_names_its_missing_columns(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": "x", "chosen": b""}]), bad / "a.parquet")
    with pytest.raises(DataError, match=r"lacks the TRL column\(s\) rejected \(it has: prompt, chosen\).*"
                                        r"trl: rejected; pickapic: caption, jpg_0, jpg_1"):
        S.open_pairs(str(bad))
    folder = write_trl(tmp_path / "split", trl_rows(2), "bytes")
    pq.write_table(pa.Table.from_pylist([{"prompt": "x", "chosen": b"", "other": 1}]), folder / "z.parquet")
    with pytest.raises(DataError, match=r"z.parquet lacks the TRL column\(s\) rejected"):
        S.open_pairs(str(folder))  # a later file of the folder lacks a column: named, not a `datasets` cast error


def test_train_score_and_eval_read_a_trl_folder(tmp_path, monkeypatch):
    """Train 2 steps, relabel with `aif score`, and measure scorer accuracy on the same TRL folder."""
    from aifeedback.scoring.inputs import open_input
    from aifeedback.stages import STAGES
    from aifeedback.stages.evaluate import preference_pairs
    from tests.pairs_fixtures import read_metrics, tiny_train

    rows = trl_rows(4, seed=1)
    folder = write_trl(tmp_path / "set", rows, "paths")
    STAGES["train"].run(tiny_train(folder, tmp_path / "run", data="human", split="train"))
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m][-1] == 2
    scored = open_input(str(folder), "train")
    assert [u.prompt for u in scored.units] == [r["prompt"] for r in rows] and scored.has_labels
    assert scored.rows.take([1], ["jpg_0", "jpg_1"]) == [{"jpg_0": rows[1]["chosen"], "jpg_1": rows[1]["rejected"]}]
    pairs = list(preference_pairs(str(folder), "train"))
    assert [(p["caption"], p["jpg_0"], p["label_0"]) for p in pairs] == [(r["prompt"], r["chosen"], 1.0) for r in rows]


def test_an_image_replaced_in_place_is_read_again(tmp_path):
    rows = trl_rows(2)
    folder = write_trl(tmp_path / "set", rows, "paths")
    assert S.open_pairs(str(folder)).dataset()[0]["jpg_0"] == rows[0]["chosen"]
    (folder / "images" / "0-chosen.jpg").write_bytes(rows[1]["chosen"])  # same path, new image: not the cached one
    assert S.open_pairs(str(folder)).dataset()[0]["jpg_0"] == rows[1]["chosen"]
