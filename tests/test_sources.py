"""The one pair reader (aifeedback.data.sources): each layout is detected, a bad layout names its missing columns,
one split rule, and train, score and eval read the same pairs from the same folder."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifeedback.data import sources as S
from aifeedback.data.labels import winner_of
from aifeedback.errors import AifError, DataError
from tests.pairs_fixtures import pickapic_rows, write_pickapic, write_score_dir


def test_each_layout_is_detected(tmp_path, monkeypatch):
    # detection order: an `aif score` output first
    assert list(S.SOURCES) == ["aif-score", "hpdv2", "hpdv3", "pickapic-wds", "imagerewarddb", "unpaired", "trl",
                               "pickapic", "columns"]
    with pytest.raises(AifError, match="unknown pair source 'pickapik'; Did you mean 'pickapic'"):
        S.SOURCES["pickapik"]
    later = S.PairSource("hub-x", "a later hub layout", "X", ("x",), lambda t: t == "org/x", S.SOURCES["pickapic"].open)
    monkeypatch.setattr(S.SOURCES, "_entries", dict(S.SOURCES._entries))  # registered for this test only
    S.register(later)  # after the Pick-a-Pic fallback, which takes any hub id, yet asked first
    assert S.source_for("org/x").name == "hub-x" and S.source_for("org/y").name == "pickapic"
    human = write_pickapic(tmp_path / "human", pickapic_rows(3))
    ai = write_score_dir(tmp_path / "ai", pickapic_rows(2))
    pq.write_table(pa.Table.from_pylist([{"x": 1}]), ai / "data" / "stray.parquet")  # not a shard: not read
    assert S.source_for(str(human)).name == "pickapic"
    assert S.source_for(str(human / "data" / "train-00000-of-00001.parquet")).name == "pickapic"  # one file
    assert S.source_for("org/set").name == "pickapic"  # a hub id: its columns are checked once loaded
    assert S.source_for(str(ai)).name == "aif-score"
    assert S.open_pairs(str(ai), "validation").files == [ai / "data" / "train-00000.parquet"]  # --split: n/a
    import datasets

    datasets.Dataset.from_list(pickapic_rows(2)).save_to_disk(str(tmp_path / "saved"))
    table = S.open_pairs(str(tmp_path / "saved"))
    assert table.source == "pickapic" and len(table.dataset()) == 2
    arrow = tmp_path / "arrow" / "train"  # a bare Arrow folder: the saved shard without save_to_disk's json
    arrow.mkdir(parents=True)
    next((tmp_path / "saved").glob("*.arrow")).rename(arrow / "data-00000.arrow")
    table = S.open_pairs(str(tmp_path / "arrow"), "train")
    assert [r["caption"] for r in table.iter_rows(["caption"])] == [r["caption"] for r in pickapic_rows(2)]


def test_a_bad_layout_names_the_missing_columns(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.Table.from_pylist([{"caption": "x", "image": b"", "score": 1.0}]), bad / "a.parquet")
    with pytest.raises(DataError, match=r"lacks the Pick-a-Pic column\(s\) jpg_0, jpg_1 \(it has: caption, image, "
                                        r"score\).*pickapic: jpg_0, jpg_1"):
        S.open_pairs(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no .parquet or .arrow files"):
        S.open_pairs(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="neither a local path nor a hub dataset id"):
        S.open_pairs(str(tmp_path / "missing"))


def test_labels_are_required_only_where_they_are_used(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("label")} for r in pickapic_rows(2)]
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "pairs.parquet")
    assert len(S.open_pairs(str(folder), labels=False).rows()) == 2  # aif score relabels them
    with pytest.raises(DataError, match=r"pairs.parquet lacks the Pick-a-Pic column\(s\) label_0, label_1"):
        S.open_pairs(str(folder))


def test_one_split_rule(tmp_path):
    files = ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "validation.parquet",
             "validation_unique-00000-of-00001.parquet", "test/part-0.parquet"]
    paths = [tmp_path / f for f in files]
    pick = {s: [p.relative_to(tmp_path).as_posix() for p in S.split_files(tmp_path, paths, s)]
            for s in ("train", "validation", "validation_unique", "test", None)}
    assert pick == {"train": files[:2], "validation": [files[2]], "validation_unique": [files[3]],
                    "test": [files[4]], None: files}
    with pytest.raises(DataError, match="no files for split 'dev'.*train, validation, validation_unique"):
        S.split_files(tmp_path, paths, "dev")
    unsplit = [tmp_path / "pairs.parquet", tmp_path / "more.parquet"]
    assert S.split_files(tmp_path, unsplit, "train") == unsplit  # a folder not split by name is one split


def test_one_label_rule():
    assert [winner_of(1, 0), winner_of(0.0, 1.0), winner_of(0.5, 0.5)] == [0, 1, None]
    assert winner_of(1, 0, has_label=False) == "unlabelled" and winner_of(1, 0, has_label=True) == 0
    assert {winner_of(1, 1), winner_of(float("nan"), 0), winner_of(None, 1), winner_of("x", 0)} == {"bad"}


def test_train_score_and_eval_read_the_same_pairs(tmp_path):
    from aifeedback.data import pairs as D
    from aifeedback.scoring.inputs import open_input
    from aifeedback.stages.evaluate import preference_pairs

    rows = pickapic_rows(6, seed=3)
    rows[1].update(label_0=0.5, label_1=0.5)  # a tie: no pair for train and eval, still relabelled by score
    rows[2]["has_label"] = False
    for r in rows:
        r.setdefault("has_label", True)
    folder = write_pickapic(tmp_path / "set", rows[:4], split="validation")
    pq.write_table(pa.Table.from_pylist(rows[4:]), folder / "data" / "validation-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), folder / "data" / "train-00000-of-00001.parquet")

    table = D.open_table("human", str(folder), "validation")
    kept, stats = D.filter_labels(table)
    trained = [(table[r]["caption"], table[r][f"jpg_{w}"]) for r, w in kept]
    assert (stats.ties, stats.unlabelled, stats.rows) == (1, 1, 6)
    evaluated = [(p["caption"], p["jpg_0"] if p["label_0"] == 1.0 else p["jpg_1"])
                 for p in preference_pairs(str(folder), "validation")]
    winners = [(r["caption"], r[f"jpg_{winner_of(r['label_0'], r['label_1'])}"]) for i, r in enumerate(rows)
               if i not in (1, 2)]
    assert trained == evaluated == winners
    scored = open_input(str(folder), "validation")
    assert [u.prompt for u in scored.units] == [r["caption"] for r in rows]  # every pair, in the same order
    assert scored.has_labels
