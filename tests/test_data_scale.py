"""Reading pairs at scale: local Parquet read in place (no copy into the `datasets` cache, exact random access),
and streams split across processes with exact resumes."""

import json
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
    from aifeedback.data.rows import MappedRows, ParquetRows

    rows = pickapic_rows(11)
    rows[4]["label_1"] = rows[4]["label_0"] = 0.5  # a tie, dropped the same way by both readers
    folder = _write_groups(tmp_path / "human", rows, files=2, group=2)
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    table = D.open_table("human", str(folder), "train")
    assert isinstance(table, MappedRows) and isinstance(table.rows, ParquetRows)  # in place, canonical cells
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


@pytest.mark.parametrize("kind", ["bytes", "image", "paths", "columns"])
def test_local_trl_and_mapped_parquet_are_read_in_place_with_the_same_pairs(tmp_path, monkeypatch, kind):
    """TRL (images as bytes, `datasets` Image structs, relative paths) and a --columns layout: mapped row by row
    over the files in place, giving the pairs the `datasets` path gives (bitwise), with nothing in its cache."""
    import datasets

    from aifeedback.data import pairs as D
    from aifeedback.data import sources as S
    from aifeedback.data.mapping import parse_columns
    from tests.layouts_fixtures import write_custom
    from tests.test_data_sources import CUSTOM
    from tests.test_trl import trl_rows, write_trl

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    if kind == "columns":
        (tmp_path / "set").mkdir()
        folder, columns = write_custom(tmp_path / "set", 7), ",".join(f"{k}={v}" for k, v in CUSTOM.items())
    else:
        folder, columns = write_trl(tmp_path / "set", trl_rows(7), kind), None
    table = D.open_table("human", str(folder), "train", columns=columns)
    pairs, stats = D.filter_labels(table)
    tr = D.Transform(16, random_crop=True, flip=True, caption_dropout=0.3)
    items = [D.PairDataset(table, pairs, tr, seed=3, window=2)[p] for p in range(9)]  # past an epoch: reshuffled
    assert _files_under(cache) == [], "nothing may be copied into the datasets cache"
    # The reference: the same files through `datasets` (what main did), which writes its Arrow cache.
    ref_table = S.open_pairs(str(folder), "train", columns=parse_columns(columns)).dataset()
    ref_pairs, ref_stats = D.filter_labels(ref_table)
    assert (pairs, stats) == (ref_pairs, ref_stats) and stats.ties == (kind == "columns")
    ref = D.PairDataset(ref_table, ref_pairs, tr, seed=3, window=2)
    for p, item in enumerate(items):
        want = ref[p]
        assert item["row"] == want["row"] and item["caption"] == want["caption"]
        assert torch.equal(item["pixels"], want["pixels"]) and torch.equal(item["time_ids"], want["time_ids"])
    for row in (0, 3, 6):  # the encoded images and labels themselves, as `datasets` gives them
        want = {c: ref_table[row][c] for c in S.PAIR_COLUMNS + S.LABEL_COLUMNS}
        assert table.take([row], list(want)) == [want]


def test_mapped_labels_are_read_without_touching_an_image(tmp_path):
    from aifeedback.data import pairs as D
    from aifeedback.data import sources as S
    from aifeedback.errors import DataError
    from tests.test_trl import trl_rows, write_trl

    folder = write_trl(tmp_path / "set", trl_rows(3), "paths")
    pair_table = S.open_pairs(str(folder), "train")
    table = D.open_table("human", str(folder), "train")
    (folder / "images").rename(tmp_path / "away")  # the images are gone: labels are still read, images are not
    assert D.filter_labels(table)[0] == [(0, 0), (1, 0), (2, 0)]
    assert [r["label_1"] for r in pair_table.iter_rows(["label_1", "caption"])] == [0.0] * 3
    with pytest.raises(DataError, match=r"row 1 \(chosen\): cannot read the image path 'images/1-chosen.jpg'"):
        table[1]


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



def _stream_folder(tmp_path: Path, n: int, files: int) -> tuple[Path, dict[str, int]]:
    """A Pick-a-Pic folder of `files` Parquet shards; returns it and caption -> row of every row."""
    rows = pickapic_rows(n)
    for i, r in enumerate(rows):
        r["caption"] = f"pair {i}"
    return _write_groups(tmp_path / "stream", rows, files=files, group=2), {r["caption"]: i for i, r in enumerate(rows)}


def _captions(stream, batches: int) -> list[str]:
    return [c for _ in range(batches) for c in next(stream)["captions"]]


def test_two_processes_stream_disjoint_shards_covering_every_pair_and_resume_at_the_same_pair(tmp_path):
    from aifeedback.data import pairs as D
    from aifeedback.data.stream import PairStream

    folder, index = _stream_folder(tmp_path, 24, files=4)
    ds = D.open_table("human", str(folder), "train", streaming=True)
    assert ds.num_shards == 4
    tr = D.Transform(16)
    streams = [PairStream(ds, tr, 2, rank, 2, 0, 4, D.PairStats()) for rank in (0, 1)]
    epoch = [_captions(s, 6) for s in streams]  # 12 pairs each: one epoch of 24 over 2 processes
    assert not set(epoch[0]) & set(epoch[1]) and len(set(epoch[0]) | set(epoch[1])) == 24
    assert epoch[0] != sorted(epoch[0], key=index.get)  # shuffled within blocks
    # each process reads its own shards: process 0 the files 0 and 2, process 1 the files 1 and 3
    assert {index[c] // 6 for c in epoch[0]} == {0, 2} and {index[c] // 6 for c in epoch[1]} == {1, 3}

    # Resume process 1 after 5 batches (10 pairs: its blocks of 4 are rows 6-9, 10-11 + 18-19, 20-23, so it is
    # inside the third block, in file 3): it continues at the same pair, and reads nothing before its block (the
    # file it consumed is replaced by ties: read again, they would shift every block).
    s1 = PairStream(ds, tr, 2, 1, 2, 0, 4, D.PairStats())
    before = _captions(s1, 5)
    state = s1.state()
    expect = next(s1)
    assert before == epoch[1][:10] and (state["epoch"], state["block"], state["taken"]) == (0, 2, 2)
    consumed = folder / "train-00001-of-00004.parquet"
    table = pq.read_table(consumed)
    ties = pa.array([0.5] * len(table), pa.float64())
    table = table.set_column(table.schema.get_field_index("label_0"), "label_0", ties)
    pq.write_table(table.set_column(table.schema.get_field_index("label_1"), "label_1", ties), consumed,
                   row_group_size=2)
    resumed = PairStream(ds, tr, 2, 1, 2, 0, 4, D.PairStats(), state=json.loads(json.dumps(state)))
    got = next(resumed)
    assert got["captions"] == expect["captions"] == epoch[1][10:]
    assert torch.equal(got["pixels"], expect["pixels"]) and got["rows"] == expect["rows"] == [10, 11]


def _weights(run: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run / f"checkpoints/checkpoint-{step:06d}/unet/diffusion_pytorch_model.safetensors")


def test_streamed_training_resumes_exactly_from_its_checkpoint(tmp_path):
    from aifeedback.stages.train import run
    from tests.pairs_fixtures import read_metrics, tiny_train

    folder, _ = _stream_folder(tmp_path, 10, files=2)
    kw = dict(streaming=True, shuffle_buffer=3, max_steps=3, checkpoint_every=1, keep_checkpoints=0)
    run(tiny_train(folder, tmp_path / "a", **kw))
    run(tiny_train(folder, tmp_path / "b", **dict(kw, max_steps=2)))
    state = json.loads((tmp_path / "b/checkpoints/checkpoint-000002/trainer_state.json").read_text())
    assert state["streams"][0]["pairs"] == 4  # 2 steps x 2 pairs, recorded per process
    run(tiny_train(folder, tmp_path / "b", **kw))  # resumes at checkpoint-000002
    wa, wb = _weights(tmp_path / "a", 3), _weights(tmp_path / "b", 3)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [r["loss"] for r in read_metrics(tmp_path / "b")]


@pytest.mark.slow
def test_two_process_streamed_training_resumes_exactly(tmp_path):
    """2 CPU processes stream their own shards; a run stopped at step 2 and resumed ends with the weights of an
    uninterrupted one."""
    import os

    from tests.launch import accelerate_launch, run_group
    from tests.pairs_fixtures import read_metrics

    folder, _ = _stream_folder(tmp_path, 16, files=4)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")

    def launch(out: str, steps: int) -> str:
        cmd = [*accelerate_launch(2), "train", "--dataset", str(folder), "--streaming", "--shuffle-buffer", "3",
               "--model", "tiny-sd15", "--resolution", "16", "--batch-size", "1", "--max-steps", str(steps),
               "--checkpoint-every", "2", "--validation-every", "0", "--num-workers", "0", "--trackers", "none",
               "--lr", "1e-4", "--no-scale-lr", "--out", str(tmp_path / out)]
        res = run_group(cmd, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stderr

    launch("a", 4)
    launch("b", 2)
    state = json.loads((tmp_path / "b/checkpoints/checkpoint-000002/trainer_state.json").read_text())
    assert [s["pairs"] for s in state["streams"]] == [2, 2]
    launch("b", 4)
    wa, wb = _weights(tmp_path / "a", 4), _weights(tmp_path / "b", 4)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [r["loss"] for r in read_metrics(tmp_path / "b")]


@pytest.mark.slow
def test_bench_scripts_run_and_in_place_reading_leaves_no_copy(tmp_path):
    """bench/data.py and bench/cache.py, shrunk: the in-place reader adds no disk, the datasets path does."""
    import os
    import sys

    from tests.launch import run_group

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")

    def bench(script: str, *args: str) -> list[dict]:
        r = run_group([sys.executable, str(root / "bench" / script), *args], env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])["results"]

    inplace, converted = bench("data.py", "--pairs", "3000", "--repeat", "1", "--work", str(tmp_path))
    assert inplace["mode"] == "in-place" and inplace["extra_disk_mb"] == 0 and inplace["pairs"] == 3000
    assert converted["extra_disk_mb"] > 0
    (cached,) = bench("cache.py", "--models", "tiny-sd15", "--pairs", "8", "--steps", "2", "--resolution", "16")
    assert cached["step_cpu_s_images"] > 0 and cached["step_cpu_s_cache"] > 0
