"""`aif score` end to end on tiny scorers: generate-layout and Pick-a-Pic inputs, pairing, ensembles, ties,
bad inputs, resume after a crash, output conflicts, multi-process, and the dataset `datasets` reads back."""

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from aifeedback.config import build_config
from aifeedback.errors import AifError, DataError
from aifeedback.stages.score import ScoreConfig, run
from aifeedback.storage.files import write_json
from aifeedback.storage.manifest import OutputConflictError, finish_output, prepare_output, read_manifest
from aifeedback.storage.shards import chunks, latent_to_bytes, read_rows, write_shard
from tests.launch import SPAWNING_LAUNCHER, accelerate_launch, process_group, run_group

ROOT = Path(__file__).resolve().parent.parent


def image_bytes(rgb, size=(24, 16), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", size, tuple(int(c) for c in rgb)).save(buf, format=fmt)
    return buf.getvalue()


def make_generate_dir(out, n_prompts=4, k=4, latents=True, corrupt=(), null_prompt_rows=(), per_file=5, seed=0,
                      empty_prompt_rows=()):
    """An `aif generate`-layout output (the contract in the team brief) from solid-colour images."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for j in range(k):
            rgb = rng.integers(0, 256, 3)
            row = dict(prompt_id=f"p{p}", prompt=f"a picture number {p}", category="animals" if p % 2 else None,
                       k=j, seed=100 * p + j, image=image_bytes(rgb, fmt="JPEG" if j % 2 else "PNG"),
                       width=24, height=16, model="tiny-sd15", scheduler="ddim", steps=2, guidance=5.0)
            if (p, j) in corrupt:
                row["image"] = b"\x89PNG truncated"
            if latents:
                row["latent"], row["latent_shape"] = latent_to_bytes(torch.full((4, 2, 3), float(p * 10 + j)))
            rows.append(row)
    for i in null_prompt_rows:
        rows[i]["prompt_id"] = None
    for i in empty_prompt_rows:
        rows[i]["prompt"] = " \t"
    manifest = prepare_output(out, "generate", {"model": "tiny-sd15"}, {"model": "tiny-sd15", "seed": seed})
    for i, chunk in enumerate(chunks(rows, per_file)):
        write_shard(out, i, chunk)
    finish_output(out, manifest, images=len(rows))
    return rows


def make_pickapic_dir(out, n=6, corrupt_row=None):
    """A local Pick-a-Pic-layout Parquet folder: captions, two images, human labels (one tie), extra columns."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        l0 = [1.0, 0.0, 0.5][i % 3]
        rows.append(dict(caption=f"caption {i % 4}", jpg_0=image_bytes(a, fmt="JPEG"), jpg_1=image_bytes(b, fmt="JPEG"),
                         label_0=l0, label_1=1.0 - l0, ranking_id=1000 + i, model_0="m0", model_1="m1", has_label=True))
    if corrupt_row is not None:
        rows[corrupt_row]["jpg_1"] = b"garbage"
    Path(out).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows[: n // 2]), Path(out) / "validation-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[n // 2 :]), Path(out) / "validation-00001-of-00002.parquet")
    return rows


def cfg(**kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return build_config(ScoreConfig, kw)


def read_pairs(out):
    return read_rows(out)


def image_scores(out):
    return [
        r for f in sorted((Path(out) / "image_scores").glob("scores-*.parquet")) for r in pq.read_table(f).to_pylist()
    ]


def parquet_files(out):
    """Pair shards and per-image score files of an output."""
    return sorted((Path(out) / "data").glob("train-*.parquet")) + sorted((Path(out) / "image_scores").glob("*.parquet"))


def same_files(a, b):
    fa, fb = parquet_files(a), parquet_files(b)
    assert fa and [p.relative_to(a) for p in fa] == [p.relative_to(b) for p in fb]
    for x, y in zip(fa, fb):
        assert pq.read_table(x).equals(pq.read_table(y)), x


def redness(data):
    x = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255
    return x[..., 0].mean() - (x[..., 1].mean() + x[..., 2].mean()) / 2


# ---------------------------------------------------------------------------------------------------------------

def test_generate_to_pairs_best_worst_with_pickscore_tiny(tmp_path):
    import datasets

    gen = tmp_path / "gen"
    src = make_generate_dir(gen)
    out = tmp_path / "pairs"
    summary = run(cfg(input=str(gen), out=str(out), scorer="pickscore:tiny", shard_size=3, batch_size=5))
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    for c in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "prompt_id", "score_0", "score_1", "margin",
              "scorer", "seed_0", "seed_1", "scores_0", "scores_1", "latent_0", "latent_1", "latent_shape"):
        assert c in ds.column_names
    assert ds.num_rows == 4 == summary["counts"]["pairs"]  # best-worst: one pair per prompt
    assert set(ds["label_0"]) <= {0.0, 1.0} and all(a + b == 1.0 for a, b in zip(ds["label_0"], ds["label_1"]))
    images = {r["seed"]: r for r in src}
    per_image = image_scores(out)
    for r in ds:
        assert r["scorer"] == "pickscore:tiny"
        assert r["label_0"] == float(r["score_0"] > r["score_1"])
        assert r["margin"] == pytest.approx(abs(r["score_0"] - r["score_1"]))
        assert r["scores_0"] == {"pickscore:tiny": r["score_0"]}
        a, b = images[r["seed_0"]], images[r["seed_1"]]
        assert r["jpg_0"] == a["image"] and r["jpg_1"] == b["image"]  # bytes passed through, not re-encoded
        assert r["latent_0"] == a["latent"] and r["latent_1"] == b["latent"] and r["latent_shape"] == [4, 2, 3]
        assert a["k"] < b["k"] and r["caption"] == a["prompt"]  # generation order, not score order
        prompt_scores = [x["raw"][0] for x in per_image if x["prompt_id"] == r["prompt_id"]]
        assert {r["score_0"], r["score_1"]} == {max(prompt_scores), min(prompt_scores)}
    manifest = read_manifest(out, "score")
    assert manifest["complete"] and manifest["counts"]["pairs"] == 4
    assert (out / "summary.json").exists() and (out / "config.yaml").exists()
    assert manifest["inputs"]["latents_from"] == {"model": "tiny-sd15", "vae": None}  # training checks it


@pytest.mark.parametrize("pairing,per_prompt", [("all", 6), ("adjacent", 3), ("random", 2)])
def test_pairings(tmp_path, pairing, per_prompt):
    gen = tmp_path / "gen"
    make_generate_dir(gen, latents=False)
    out = tmp_path / "pairs"
    run(cfg(input=str(gen), out=str(out), scorer="redness", pairing=pairing))
    rows = read_pairs(out)
    assert len(rows) == 4 * per_prompt
    assert "latent_0" not in rows[0]
    for r in rows:
        assert r["score_0"] == pytest.approx(redness(r["jpg_0"])) and r["score_1"] == pytest.approx(redness(r["jpg_1"]))
        assert r["k_0"] < r["k_1"]
    if pairing == "random":  # reproducible, and disjoint within a prompt
        run(cfg(input=str(gen), out=str(tmp_path / "again"), scorer="redness", pairing=pairing))
        assert read_pairs(tmp_path / "again") == rows
        for p in {r["prompt_id"] for r in rows}:
            ks = [k for r in rows if r["prompt_id"] == p for k in (r["k_0"], r["k_1"])]
            assert len(ks) == len(set(ks))


def test_min_margin_drops_or_keeps_ties(tmp_path):
    gen = tmp_path / "gen"
    make_generate_dir(gen, latents=False)
    dropped = run(cfg(input=str(gen), out=str(tmp_path / "a"), scorer="redness", pairing="all", min_margin=0.3))
    kept = run(
        cfg(input=str(gen), out=str(tmp_path / "b"), scorer="redness", pairing="all", min_margin=0.3, keep_ties=True)
    )
    a, b = read_pairs(tmp_path / "a"), read_pairs(tmp_path / "b")
    assert 0 < len(a) < 24 and len(b) == 24
    assert all(r["margin"] >= 0.3 and {r["label_0"], r["label_1"]} == {0.0, 1.0} for r in a)
    ties = [r for r in b if r["label_0"] == 0.5]
    assert len(ties) == 24 - len(a) and all(r["label_1"] == 0.5 and r["margin"] < 0.3 for r in ties)
    assert dropped["counts"]["ties_dropped"] == len(ties) and kept["counts"]["ties_kept"] == len(ties)


def test_ensemble_keeps_raw_scores_and_normalises_per_prompt(tmp_path):
    from aifeedback.scoring.pairing import combine

    gen = tmp_path / "gen"
    make_generate_dir(gen, latents=False)
    out = tmp_path / "pairs"
    summary = run(
        cfg(input=str(gen), out=str(out), scorer="redness,brightness,clip:tiny", weights="2,1,1", normalize="rank")
    )
    rows = read_pairs(out)
    per_image = image_scores(out)
    for r in rows:
        assert r["scorer"] == "rank(2*redness + 1*brightness + 1*clip:tiny)"
        assert set(r["scores_0"]) == {"redness", "brightness", "clip:tiny"}
        assert r["scores_0"]["redness"] == pytest.approx(redness(r["jpg_0"]))
        group = [x for x in per_image if x["prompt_id"] == r["prompt_id"]]
        combined = combine([x["raw"] for x in group], [2, 1, 1], "rank")
        assert r["score_0"] == pytest.approx(combined[[x["slot"] for x in group].index(r["k_0"])])
        assert {r["score_0"], r["score_1"]} == {max(combined), min(combined)}
    assert set(summary["scores"]) == {"redness", "brightness", "clip:tiny", "ensemble"}
    assert "redness vs brightness" in summary["scorer_agreement"]
    assert summary["scorer_agreement"]["redness vs brightness"]["image_pairs"] == 4 * 6


def test_bad_images_and_rows_are_counted_reported_and_skipped(tmp_path, capsys):
    gen = tmp_path / "gen"
    make_generate_dir(gen, latents=False, corrupt={(1, 2)}, null_prompt_rows=(13,))  # row 13 = prompt 3, k 1
    out = tmp_path / "pairs"
    summary = run(cfg(input=str(gen), out=str(out), scorer="redness"))
    c = summary["counts"]
    assert c["images_failed"] == 1 and c["bad_rows"] == 1 and c["images_scored"] == 14 and c["pairs"] == 4
    assert summary["failed_images"][0]["where"].endswith("train-00001.parquet row 1 (image)")  # global row 6
    assert "cannot decode image" in summary["failed_images"][0]["error"]
    assert summary["bad_rows"] == [{"where": f"{gen / 'data' / 'train-00002.parquet'} row "
                                             "3", "error": "prompt_id is null"}]
    assert "skipped" in capsys.readouterr().out
    assert all(r["k_0"] != 2 and r["k_1"] != 2 for r in read_pairs(out) if r["prompt_id"] == "p1")


def test_generate_rows_with_an_empty_prompt_are_skipped_counted_and_listed(tmp_path, capsys):
    gen = tmp_path / "gen"
    make_generate_dir(gen, latents=False, empty_prompt_rows=(4, 5))  # prompt 1's k 0 and 1: the last 2 of its 4 stay
    summary = run(cfg(input=str(gen), out=str(tmp_path / "pairs"), scorer="redness"))
    assert summary["counts"]["bad_rows"] == 2 and summary["counts"]["images_scored"] == 14
    assert summary["bad_rows"] == [{"where": f"{gen / 'data' / 'train-00000.parquet'} row 4",
                                    "error": "prompt is empty or whitespace-only"},
                                   {"where": f"{gen / 'data' / 'train-00001.parquet'} row 0",
                                    "error": "prompt is empty or whitespace-only"}]
    assert "prompt is empty or whitespace-only" in capsys.readouterr().out
    assert all(r["caption"].strip() for r in read_pairs(tmp_path / "pairs"))


def test_a_prompt_with_one_readable_image_yields_no_pair(tmp_path):
    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=2, k=2, latents=False, corrupt={(0, 0)})
    summary = run(cfg(input=str(gen), out=str(tmp_path / "o"), scorer="redness"))
    assert summary["counts"]["units_without_pair"] == 1 and summary["counts"]["pairs"] == 1


def test_empty_shards_load_train_and_count_as_done(tmp_path, monkeypatch):
    """A shard whose prompts all lose their pair is written with no rows (and no row group, which `datasets`
    rejects); the output still loads with datasets and the train reader, and a rerun does not rewrite it."""
    import datasets

    from aifeedback.data import pairs as D
    from aifeedback.storage import shards

    gen, out = tmp_path / "gen", tmp_path / "pairs"
    make_generate_dir(gen, n_prompts=3, k=2, latents=False, corrupt={(0, 0), (2, 1)})  # prompts 0 and 2: no pair
    summary = run(cfg(input=str(gen), out=str(out), scorer="redness", shard_size=1))
    assert summary["counts"]["pairs"] == 1
    assert [pq.ParquetFile(f).metadata.num_rows for f in sorted((out / "data").glob("*.parquet"))] == [0, 1, 0]
    assert pq.read_schema(out / "data" / "train-00000.parquet").names == pq.read_schema(
        out / "data" / "train-00001.parquet").names
    assert datasets.load_dataset("parquet", data_dir=str(out), split="train").num_rows == 1
    pairs, stats = D.filter_labels(D.open_table("ai", str(out), "train"))
    assert len(pairs) == 1 and stats.rows == 1

    manifest = read_manifest(out, "score")
    write_json(out / "manifest.json", dict(manifest, complete=False))  # as if killed before the end
    written = []
    real = shards.write_shard
    monkeypatch.setattr(shards, "write_shard", lambda *a, **k: written.append(a[1]) or real(*a, **k))
    run(cfg(input=str(gen), out=str(out), scorer="redness", shard_size=1))
    assert written == []  # the empty shards count as done, like the full one


def test_training_on_an_output_with_no_pairs_says_why(tmp_path):
    from aifeedback.data import pairs as D

    gen, out = tmp_path / "gen", tmp_path / "pairs"
    make_generate_dir(gen, n_prompts=2, k=2, latents=False)
    run(cfg(input=str(gen), out=str(out), scorer="redness", shard_size=1, min_margin=5.0))  # redness is within 1
    with pytest.raises(DataError, match=r"no usable preference pairs in .*pairs: its `aif score` run made 0 pairs "
                                        r"from 2 prompts .*2 pairs closer than --min-margin 5.0 dropped"):
        D.open_table("ai", str(out), "train")
    env = dict(os.environ, AIF_TEST_CACHE=os.environ.get("AIF_TEST_CACHE", ""))
    proc = run_group([sys.executable, "-m", "aifeedback", "train", "--data", "ai", "--dataset", str(out),
                      "--model", "tiny-sd15", "--out", str(tmp_path / "run")], env=env, cwd=ROOT)
    assert proc.returncode == 2 and "no usable preference pairs" in proc.stderr and "Traceback" not in proc.stderr


def test_crash_and_rerun_gives_identical_output(tmp_path, monkeypatch):
    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=6)
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    kw = dict(input=str(gen), scorer="redness,clip:tiny", shard_size=2, batch_size=3)
    run(cfg(out=str(whole), **kw))

    from aifeedback.storage import shards

    real = shards.write_shard
    calls = []

    def dying(out_dir, i, rows, schema=None):
        if len(calls) == 2:  # two of the three pair shards (phase 2) written, then the process "dies"
            raise KeyboardInterrupt
        calls.append(i)
        return real(out_dir, i, rows, schema=schema)

    monkeypatch.setattr(shards, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(out=str(crashed), **kw))
    monkeypatch.setattr(shards, "write_shard", real)
    assert not read_manifest(crashed, "score")["complete"]
    assert not list(crashed.rglob("*.tmp"))
    run(cfg(out=str(crashed), **kw))
    same_files(whole, crashed)


def test_a_different_job_is_refused_unless_overwrite(tmp_path):
    gen = tmp_path / "gen"
    make_generate_dir(gen, latents=False)
    out = tmp_path / "pairs"
    run(cfg(input=str(gen), out=str(out), scorer="redness"))
    run(cfg(input=str(gen), out=str(out), scorer="redness", batch_size=7))  # not an identity setting: resumes
    with pytest.raises(OutputConflictError, match="scorer"):
        run(cfg(input=str(gen), out=str(out), scorer="brightness"))
    run(cfg(input=str(gen), out=str(out), scorer="brightness", overwrite=True))
    assert {x["scorer"] for x in read_pairs(out)} == {"brightness"}
    assert all(len(x["raw"]) == 1 for x in image_scores(out)) and len(image_scores(out)) == 16


def test_relabel_pickapic_layout_reports_human_agreement(tmp_path):
    src = tmp_path / "pickapic"
    rows = make_pickapic_dir(src, n=9, corrupt_row=4)
    out = tmp_path / "relabelled"
    summary = run(cfg(input=str(src), out=str(out), scorer="redness", split="validation"))
    got = read_pairs(out)
    assert len(got) == 8 and summary["counts"]["images_failed"] == 1
    right = n = 0
    for r in got:
        orig = rows[r["source_row"]]
        assert r["jpg_0"] == orig["jpg_0"] and r["human_label_0"] == orig["label_0"]
        assert r["ranking_id"] == orig["ranking_id"] and r["model_1"] == "m1"  # other columns pass through
        assert r["label_0"] == float(redness(r["jpg_0"]) > redness(r["jpg_1"]))
        if orig["label_0"] != 0.5:
            n += 1
            right += (r["label_0"] == orig["label_0"])
    assert summary["human_agreement"]["redness"] == {"accuracy": pytest.approx(right / n), "pairs": n}
    assert summary["kind"] == "pairs" and summary["pairing"] == "given (relabel)"
    # an `aif score` output is itself a Pick-a-Pic-layout input
    again = run(cfg(input=str(out), out=str(tmp_path / "again"), scorer="brightness"))
    assert again["counts"]["pairs"] == 8
    with pytest.raises(AifError, match="--pairing all applies to `aif generate` inputs"):
        run(cfg(input=str(src), out=str(tmp_path / "x"), scorer="redness", pairing="all"))


def test_hub_layout_rows_with_image_features(tmp_path):
    import datasets

    from aifeedback.scoring.inputs import HubRows, _pairs_input

    ds = datasets.Dataset.from_dict(
        {"caption": ["a", "b"], "jpg_0": [image_bytes((255, 0, 0)), image_bytes((0, 0, 0))],
         "jpg_1": [image_bytes((0, 0, 255)), image_bytes((0, 255, 0))], "label_0": [1.0, 0.0], "label_1": [0.0, 1.0]}
    ).cast_column("jpg_0", datasets.Image()).cast_column("jpg_1", datasets.Image())
    inp = _pairs_input(HubRows(ds, "org/set[validation]"), None, {"hub": "org/set"})
    assert inp.has_labels and len(inp.units) == 2
    got = inp.rows.take([1], ["jpg_0", "caption"])
    assert isinstance(got[0]["jpg_0"], bytes) and got[0]["caption"] == "b"
    assert inp.rows.where(1) == "org/set[validation] row 1"


def test_input_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="neither a local path nor a hub dataset id"):
        run(cfg(input=str(tmp_path / "missing" / "dir"), out=str(tmp_path / "o")))
    with pytest.raises(DataError, match="could not load the dataset 'nobody/nothing'"):  # offline in tests
        run(cfg(input="nobody/nothing", out=str(tmp_path / "o"), split="validation"))
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.Table.from_pylist([{"caption": "x", "jpg_0": b"1"}]), bad / "a.parquet")
    with pytest.raises(DataError, match="lacks column.*jpg_1"):
        run(cfg(input=str(bad), out=str(tmp_path / "o")))
    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=1, k=2)
    manifest = read_manifest(gen)
    write_json(gen / "manifest.json", dict(manifest, complete=False))
    with pytest.raises(DataError, match="unfinished `aif generate` output"):
        run(cfg(input=str(gen), out=str(tmp_path / "o")))


def test_config_validation():
    from aifeedback.config import ConfigError

    with pytest.raises(ConfigError) as e:
        build_config(ScoreConfig, {"input": "x", "out": "y", "scorer": "a,b", "weights": "1", "pairing": "best"})
    msg = str(e.value)
    assert "pairing" in msg and "best-worst" in msg
    with pytest.raises(ConfigError, match="1 weight"):
        build_config(ScoreConfig, {"input": "x", "out": "y", "scorer": "a,b", "weights": "1"})


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def test_worker_processes_and_two_process_accelerate_launch_match_one_process(tmp_path):
    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=5)
    one, two = tmp_path / "one", tmp_path / "two"
    run(cfg(input=str(gen), out=str(one), scorer="redness,saturation", shard_size=2, workers=2))
    r = run_group(
        [*accelerate_launch(2), "score",
         "--input", str(gen), "--out", str(two), "--scorer", "redness,saturation", "--shard-size", "2",
         "--workers", "0", "--no-progress"],
        env=_env(), timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pairs kept 5" in r.stdout and r.stdout.count("aif score:") == 1  # rank 0 reports
    assert len(parquet_files(one)) == 6
    same_files(one, two)
    assert json.loads((two / "manifest.json").read_text())["counts"]["processes"] == 2


def test_cli_reports_a_bad_scorer_without_traceback(tmp_path):
    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=1, k=2, latents=False)
    r = run_group([sys.executable, "-m", "aifeedback", "score", "--input", str(gen), "--out", str(tmp_path / "o"),
                   "--scorer", "pickscor", "--workers", "0"],
                  env=_env(), timeout=120)
    assert r.returncode == 2 and "Did you mean 'pickscore'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # ~15 s of CPU in 3 processes; test_crash_and_rerun_gives_identical_output covers resume by default
def test_sigkill_and_rerun_gives_identical_output(tmp_path):
    import signal
    import time

    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=24, k=4)
    args = ["--input", str(gen), "--scorer", "clip:tiny", "--shard-size", "1", "--workers", "0", "--no-progress"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_group(
        [sys.executable, "-m", "aifeedback", "score", "--out", str(whole), *args], env=_env(), check=True, timeout=600,
        capture_output=False)
    with process_group([sys.executable, "-m", "aifeedback", "score", "--out", str(killed), *args], env=_env()) as p:
        deadline = time.time() + 300
        while len(list((killed / "image_scores").glob("*.parquet"))) < 3 and time.time() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert len(list((killed / "image_scores").glob("*.parquet"))) < 24
    run_group(
        [sys.executable, "-m", "aifeedback", "score", "--out", str(killed), *args], env=_env(), check=True, timeout=600,
        capture_output=False)
    same_files(whole, killed)


def test_tiny_generate_then_score(tiny_sd15, tmp_path):
    import datasets

    from aifeedback.stages import generate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue sky\n")
    gen = tmp_path / "gen"
    generate.run(build_config(generate.GenerateConfig, {
        "model": "tiny-sd15", "prompts": str(prompts), "out": str(gen), "steps": 2, "images_per_prompt": 3,
        "resolution": 32, "save_latents": True}))
    out = tmp_path / "pairs"
    summary = run(cfg(input=str(gen), out=str(out), scorer="hpsv2:tiny,redness", keep_ties=True))
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert ds.num_rows == 2 == summary["counts"]["pairs"]
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "latent_0", "latent_shape"} <= set(ds.column_names)
    assert set(ds["label_0"]) <= {0.0, 0.5, 1.0} and set(ds["caption"]) == {"a red apple", "a blue sky"}
    assert all(len(r["latent_0"]) == 2 * int(np.prod(r["latent_shape"])) for r in ds)  # float16 bytes


def test_decoding_workers_never_run_the_callers_unguarded_main(tmp_path):
    """`--workers N` decodes in DataLoader processes: they must not depend on the caller's `if __name__ ==
    "__main__":` guard, whatever the default start method (spawn and forkserver import the caller's script)."""
    gen = tmp_path / "gen"
    make_generate_dir(gen, n_prompts=2, k=2, latents=False)
    script = tmp_path / "launcher.py"
    script.write_text(SPAWNING_LAUNCHER)
    r = run_group([sys.executable, str(script), "score", "--input", str(gen), "--out", str(tmp_path / "o"),
                   "--scorer", "redness", "--workers", "1", "--no-progress"], env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_manifest(tmp_path / "o", "score")["complete"]
