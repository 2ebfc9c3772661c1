"""Reading pairs at scale: local Parquet read in place (no copy into the `datasets` cache, exact random access),
and streams split across processes with exact resumes."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.pairs_fixtures import pickapic_rows


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _write_groups(folder: Path, rows: list[dict], files: int, group: int) -> Path:
    """A Pick-a-Pic folder split into `files` Parquet files of row groups of `group` rows."""
    folder.mkdir(parents=True)
    per = -(-len(rows) // files)
    for i in range(files):
        name = f"train-{i:05d}-of-{files:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[i * per:(i + 1) * per]), folder / name, row_group_size=group)
    return folder


def test_local_parquet_is_read_in_place_with_the_same_pairs_in_the_same_order(tmp_path, monkeypatch):
    import datasets

    from aifeedback.data import pairs as D
    from aifeedback.data.rows import ParquetRows

    rows = pickapic_rows(11)
    rows[4]["label_1"] = rows[4]["label_0"] = 0.5  # a tie, dropped the same way by both readers
    folder = _write_groups(tmp_path / "human", rows, files=2, group=2)
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    table = D.open_table("human", str(folder), "train")
    assert isinstance(table, ParquetRows)
    pairs, stats = D.filter_labels(table)
    tr = D.Transform(16, random_crop=True, flip=True, caption_dropout=0.3)
    got = D.PairDataset(table, pairs, tr, seed=3, window=2)
    items = [got[p] for p in range(25)]  # past two epochs: positions visit row groups in shuffled order
    assert _files_under(cache) == [], "nothing may be copied into the datasets cache"
    # The reference: the same files through `datasets` (what main did), which writes its Arrow cache.
    ref_table = datasets.load_dataset("parquet", data_files=[str(f) for f in sorted(folder.iterdir())], split="train",
                                      cache_dir=str(tmp_path / "ref-cache"))
    ref_pairs, ref_stats = D.filter_labels(ref_table)
    assert (pairs, stats) == (ref_pairs, ref_stats) and stats.ties == 1
    ref = D.PairDataset(ref_table, ref_pairs, tr, seed=3, window=2)
    for p, item in enumerate(items):
        want = ref[p]
        assert item["row"] == want["row"] and item["caption"] == want["caption"]
        assert torch.equal(item["pixels"], want["pixels"]) and torch.equal(item["time_ids"], want["time_ids"])


def test_in_place_rows_pickle_light_and_name_broken_files(tmp_path):
    import pickle

    from aifeedback.data.rows import ParquetRows
    from aifeedback.errors import DataError

    folder = _write_groups(tmp_path / "h", pickapic_rows(6), files=1, group=2)
    files = sorted(folder.iterdir())
    r = ParquetRows(files, "h", ["caption", "label_0"])
    assert r[5] == {"caption": pickapic_rows(6)[5]["caption"], "label_0": pickapic_rows(6)[5]["label_0"]}
    assert len(pickle.dumps(r)) < 2000  # a DataLoader worker gets file names, not the cached row group
    assert r.where(5) == f"{files[0]} row 5"
    with pytest.raises(IndexError):
        r[6]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="broken.parquet is not a readable Parquet file"):
        ParquetRows([broken], "x")


def test_arrow_files_are_memory_mapped_in_place(tmp_path, monkeypatch):
    import datasets

    from aifeedback.data import pairs as D

    rows = pickapic_rows(4)
    ds = datasets.Dataset.from_list(rows)
    folder = tmp_path / "arrow"
    folder.mkdir()
    # the `datasets` cache format: an Arrow IPC stream
    with pa.OSFile(str(folder / "train.arrow"), "wb") as sink, pa.ipc.new_stream(sink, ds.data.table.schema) as w:
        w.write_table(ds.data.table)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    table = D.open_table("human", str(folder), "train")
    assert [table[i]["caption"] for i in range(4)] == [r["caption"] for r in rows]
    assert _files_under(tmp_path / "hf-cache") == []

