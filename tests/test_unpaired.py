"""`aif score --unpaired`: the desirable rule against hand computations, and the per-image output next to the pairs
(layout, `datasets` round trip, labels from the scores, resume after a crash, Pick-a-Pic input)."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aifeedback.scoring.desirable import desirable_flags, top_count, top_share
from aifeedback.stages.score import run
from tests.test_score import cfg, image_scores, make_generate_dir, make_pickapic_dir


def test_top_count_is_the_ceiling_of_the_share():
    assert [top_count(n, 0.5) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]
    assert top_count(10, 0.3) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point: still 3
    assert top_count(8, 1.0) == 8 and top_count(8, 0.01) == 1
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        top_count(4, 0.0)


def test_top_share_by_hand():
    # scores 0.2 0.9 0.5 0.7: best first 0.9 0.7 | 0.5 0.2; k = 2, the cut is the 2nd best score 0.7
    assert top_share([0.2, 0.9, 0.5, 0.7], 0.5) == [False, True, False, True]
    # k = ceil(0.25 * 4) = 1: only the best
    assert top_share([0.2, 0.9, 0.5, 0.7], 0.25) == [False, True, False, False]
    # a tie with the cut: both images scoring the 2nd best value are desirable (3 of 4), whatever their order
    assert top_share([0.7, 0.9, 0.7, 0.1], 0.5) == [True, True, True, False]
    assert top_share([], 0.5) == []


def test_per_prompt_global_and_threshold_rules_by_hand():
    scores = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]
    groups = ["a", "a", "a", "b", "b", "b"]
    # per prompt, k = ceil(0.5 * 3) = 2 of each prompt: a's 2.0, 3.0 and b's 20.0, 30.0
    assert desirable_flags(scores, groups, 0.5, "prompt") == [False, True, True, False, True, True]
    # over all six, k = 3: the three best are b's
    assert desirable_flags(scores, groups, 0.5, "global") == [False, False, False, True, True, True]
    # a threshold replaces the share: score >= 3
    assert desirable_flags(scores, groups, 0.5, "prompt", threshold=3.0) == [False, False, True, True, True, True]
    with pytest.raises(ValueError, match="2 group keys"):
        desirable_flags(scores, groups[:2], 0.5, "prompt")


def unpaired_files(out):
    return sorted((Path(out) / "unpaired").glob("images-*.parquet"))


def test_unpaired_output_next_to_the_pairs(tmp_path):
    import datasets

    gen, out = tmp_path / "gen", tmp_path / "scored"
    src = make_generate_dir(gen, n_prompts=4, k=4, corrupt=[(1, 2)])
    summary = run(cfg(input=str(gen), out=str(out), scorer="redness", shard_size=3, unpaired=True))
    assert [f.name for f in unpaired_files(out)] == ["images-00000.parquet", "images-00001.parquet"]
    ds = datasets.load_dataset("parquet", data_dir=str(out / "unpaired"), split="train")
    pairs = datasets.load_dataset("parquet", data_dir=str(out), split="train")  # the pairs alone, as before
    assert "label_0" in pairs.column_names and "desirable" not in pairs.column_names
    assert ds.num_rows == 15  # 16 images, one unreadable
    by_seed = {r["seed"]: r for r in src}
    raw = {(r["prompt_id"], r["slot"]): r["raw"][0] for r in image_scores(out) if r["raw"] is not None}
    for r in ds:
        image = by_seed[r["seed"]]
        assert r["jpg"] == image["image"] and r["latent"] == image["latent"] and r["latent_shape"] == [4, 2, 3]
        assert r["caption"] == image["prompt"] and r["k"] == image["k"] and r["scorer"] == "redness"
        assert r["score"] == raw[(r["prompt_id"], r["k"])] == r["scores"]["redness"]
        # the per-prompt median rule, recomputed from the per-image scores of the prompt
        mine = sorted((v for (p, _), v in raw.items() if p == r["prompt_id"]), reverse=True)
        assert r["desirable"] == (r["score"] >= mine[-(-len(mine) // 2) - 1])
    assert sum(ds["desirable"]) == 2 + 2 + 2 + 2  # ceil(n / 2) per prompt, n = 4, 3, 4, 4
    assert summary["counts"]["images_desirable"] == 8 and summary["counts"]["images_undesirable"] == 7
    # training finds the stored latents' model through the output's manifest, one folder up
    from aifeedback.data.pairs import check_source, latent_source

    check_source("ai", str(out / "unpaired"))  # --data ai: an `aif score` output's folder
    assert latent_source(str(out / "unpaired")) == {"model": "tiny-sd15", "vae": None}


def test_unpaired_global_threshold_and_pickapic_input(tmp_path):
    src = tmp_path / "pap"
    make_pickapic_dir(src, n=6)
    out = tmp_path / "scored"
    run(cfg(input=str(src), out=str(out), scorer="redness", unpaired=True, desirable_threshold=0.0))
    rows = [r for f in unpaired_files(out) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 12 and {r["column"] for r in rows} == {"jpg_0", "jpg_1"}
    assert sorted({r["source_row"] for r in rows}) == list(range(6))
    assert all(r["desirable"] == (r["score"] >= 0.0) for r in rows)
    assert "seed" not in rows[0] and "latent" not in rows[0]


def test_unpaired_output_resumes_after_a_crash(tmp_path, monkeypatch):
    import aifeedback.stages.score as S

    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=6)
    kw = dict(input=str(gen), scorer="redness", shard_size=2, unpaired=True, desirable_scope="global",
              desirable_top=0.25)
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    run(cfg(out=str(whole), **kw))
    real, calls = S._write_unpaired, []

    def dying(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(S, "_write_unpaired", dying)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(out=str(crashed), **kw))
    monkeypatch.setattr(S, "_write_unpaired", real)
    assert len(unpaired_files(crashed)) == 2 and not list(crashed.rglob("*.tmp"))
    run(cfg(out=str(crashed), **kw))
    a, b = unpaired_files(whole), unpaired_files(crashed)
    assert [f.name for f in a] == [f.name for f in b] == [f"images-0000{i}.parquet" for i in range(3)]
    for x, y in zip(a, b):
        assert pq.read_table(x).equals(pq.read_table(y))
    flags = [r for f in a for r in pq.read_table(f).column("desirable").to_pylist()]
    assert sum(flags) == 6  # ceil(0.25 * 24) over all images
