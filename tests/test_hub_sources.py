"""Issue 23's data: HPDv3 (MizzenAI/HPDv3 JSON, path1 preferred) and Pick-a-Pic v2 in WebDataset tar shards
(sayakpaul/pickapic_v2_webdataset) as pair sources, on tiny local copies in the upstream layouts; `aif inspect
--against` (prompt and image leakage between two sets); `aif eval --scorer-accuracy` on the HPDv3 test layout."""

from __future__ import annotations

import json

import datasets
import pytest

from aifeedback.config import ConfigError, build_config
from aifeedback.data import leakage
from aifeedback.data import sources as S
from aifeedback.errors import DataError
from aifeedback.stages import STAGES
from tests.layouts_fixtures import write_hpdv3, write_pickapic_wds
from tests.pairs_fixtures import pickapic_rows, write_pickapic
from tests.test_data_sources import winners


def test_hpdv3_json_is_read_with_path1_preferred(tmp_path):
    folder = write_hpdv3(tmp_path / "hpdv3", n=4)
    write_hpdv3(folder, n=2, name="test.json", prefix="t")
    assert S.source_for(str(folder)).name == "hpdv3"
    table = S.open_pairs(str(folder), "train")
    assert table.source == "hpdv3"
    ds = table.dataset()
    assert [r["caption"] for r in ds] == [f"{w} {i}" for i, w in enumerate(("red", "blue", "cat", "dog"))]
    assert winners(ds) == ["red"] * 4 and [r["label_0"] for r in ds] == [1.0] * 4
    assert [r["caption"] for r in S.open_pairs(str(folder), "test").dataset()] == ["tred 0", "tblue 1"]
    assert len(list(S.open_pairs(str(folder)).iter_rows(["caption"]))) == 6  # no split: every file
    assert S.source_for(str(folder / "test.json")).name == "hpdv3"


def test_hpdv3_errors_name_the_file_and_record(tmp_path):
    folder = write_hpdv3(tmp_path / "hpdv3", n=3)
    records = json.loads((folder / "train.json").read_text())
    (folder / "train.json").write_text(json.dumps(records[:1] + [{"prompt": "p", "path1": "images/0/r.jpg"}]))
    with pytest.raises(DataError, match=r"train.json record 1 lacks HPDv3's key\(s\) path2 \(it has: prompt, path1\)"):
        S.open_pairs(str(folder), "train")
    (folder / "train.json").write_text(json.dumps(records[:2] + [dict(records[2], path2="images/gone.jpg")]))
    with pytest.raises(DataError, match=r"train.json record 2 \(image 0 = path1, image 1 = path2\) image 1: cannot "
                                        r"read the image path 'images/gone.jpg'"):
        S.open_pairs(str(folder), "train")
    (folder / "train.json").write_text(json.dumps(records[:1] + [dict(records[1], path1="../../etc/passwd")]))
    with pytest.raises(DataError, match="lies outside the dataset folder"):
        S.open_pairs(str(folder), "train")


@pytest.mark.parametrize("streaming", [False, True])
def test_pickapic_webdataset_shards_are_read_as_pairs(tmp_path, streaming):
    folder = write_pickapic_wds(tmp_path / "wds", n=5, shards=2)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.tar", "00001.tar"]
    assert S.source_for(str(folder)).name == "pickapic-wds"
    table = S.open_pairs(str(folder), streaming=streaming)
    rows = list(table.iter_rows(["caption", "jpg_0", "jpg_1", "label_0", "label_1"]))
    want = pickapic_rows(5)
    assert [(r["caption"], r["jpg_0"], r["jpg_1"], r["label_0"], r["label_1"]) for r in rows] == \
        [(w["caption"], w["jpg_0"], w["jpg_1"], w["label_0"], w["label_1"]) for w in want]
    if not streaming:  # random access, as `aif train` and `aif score` read it
        assert table.rows().take([3], ["caption", "label_1"]) == [{"caption": want[3]["caption"],
                                                                   "label_1": want[3]["label_1"]}]
    single = S.open_pairs(str(folder / "00001.tar"), streaming=streaming)
    assert len(list(single.iter_rows(["caption"]))) == 2


def test_inspect_streams_webdataset_shards_without_a_cache_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = write_pickapic_wds(tmp_path / "wds", n=4, shards=2)
    summary = STAGES["inspect"].run(build_config(STAGES["inspect"].config, {"dataset": str(folder),
                                                                           "out": str(tmp_path / "o")}))
    assert (summary["source"], summary["rows"], summary["pairs"], summary["examples"]) == ("pickapic-wds", 4, 4, 4)
    assert not list((tmp_path / "hf_cache").rglob("*.arrow"))  # read in one pass, not copied
    S.open_pairs(str(folder)).dataset()  # random access (train, score): a copy, where this test's cache is
    assert list((tmp_path / "hf_cache").rglob("*.arrow"))


def test_pickapic_webdataset_with_a_missing_field_names_it(tmp_path):
    folder = write_pickapic_wds(tmp_path / "wds", n=2, shards=1, caption="prompt_text")
    with pytest.raises(DataError, match=r"wds lacks the Pick-a-Pic WebDataset field\(s\) \{key\}.caption.txt or "
                                        r"\{key\}.original_prompt.txt \(its samples have: jpg_0.jpg, jpg_1.jpg, "
                                        r"prompt_text.txt, label_0.txt, label_1.txt\). Fix: every sample needs"):
        S.open_pairs(str(folder))


def test_a_tar_beside_parquet_files_is_not_taken_for_shards_and_a_broken_shard_is_named(tmp_path):
    folder = write_pickapic(tmp_path / "pp", pickapic_rows(2))
    (folder / "images.tar").write_bytes(b"not a tar")
    assert S.source_for(str(folder)).name == "pickapic"
    shards = write_pickapic_wds(tmp_path / "wds", n=2, shards=1)
    (shards / "00000.tar").write_bytes(b"not a tar")
    with pytest.raises(DataError, match=r"00000.tar is not a readable tar shard .*remove or replace it"):
        S.source_for(str(shards))


def test_a_webdataset_hub_id_is_renamed_once_loaded(tmp_path, monkeypatch):
    folder = write_pickapic_wds(tmp_path / "wds", n=3, shards=1)
    loaded = datasets.load_dataset("webdataset", data_files=[str(folder / "00000.tar")], split="train")
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None, streaming=False: loaded)
    table = S.open_pairs("sayakpaul/pickapic_v2_webdataset", "train")
    assert table.source == "pickapic-wds"
    assert [r["caption"] for r in table.iter_rows(["caption"])] == [r["caption"] for r in pickapic_rows(3)]


def test_leakage_counts_exact_and_normalised_prompts_and_identical_images(tmp_path):
    train = pickapic_rows(6)
    test = [dict(r) for r in pickapic_rows(3, seed=7, size=(20, 24))]  # other prompts, other image bytes
    test[0]["caption"] = train[1]["caption"]  # exact
    test[1]["caption"] = "  " + train[2]["caption"].upper().replace(" ", "\t ") + " "  # same once normalised
    test[2]["jpg_1"] = train[4]["jpg_0"]  # an identical image under another prompt
    ix = leakage.index(iter(test))
    out = leakage.overlap(iter(train), ix, "test")
    assert (out["rows"], out["test_rows"], out["leak"]) == (6, 3, True)
    assert (out["prompts_exact"]["rows"], out["prompts_exact"]["distinct"]) == (1, 1)
    assert out["prompts_exact"]["examples"] == [{"row": 1, "test_row": 0, "prompt": train[1]["caption"]}]
    assert (out["prompts_normalised"]["rows"], out["prompts_normalised"]["distinct"]) == (2, 2)
    assert out["images"]["rows"] == 1 and out["images"]["examples"][0] == {
        "row": 4, "side": "jpg_0", "test_row": 2, "test_side": "jpg_1", "sha256": leakage.image_hash(train[4]["jpg_0"])}
    clean = leakage.overlap(iter(train), leakage.index(iter(pickapic_rows(3, seed=7, size=(20, 24)))), "test")
    assert not clean["leak"] and "leakage check: none" in leakage.describe(clean)


def test_inspect_against_reports_planted_leaks_and_fails_on_request(tmp_path):
    train = write_hpdv3(tmp_path / "hpdv3", n=4)
    write_hpdv3(train, n=2, name="test.json", prefix="t")
    records = json.loads((train / "test.json").read_text())
    records[0]["prompt"] = "RED  0"  # train record 0's prompt once normalised
    records[1]["path2"] = "images/2/b.jpg"  # train record 2's path2: the same file
    (train / "test.json").write_text(json.dumps(records))
    cfg = {"dataset": str(train), "split": "train", "against": str(train), "against_split": "test",
           "out": str(tmp_path / "o"), "examples": 2}
    summary = STAGES["inspect"].run(build_config(STAGES["inspect"].config, cfg))
    leak = summary["leakage"]
    assert (leak["rows"], leak["test_rows"], leak["leak"]) == (4, 2, True)
    assert (leak["prompts_exact"]["rows"], leak["prompts_normalised"]["rows"], leak["images"]["rows"]) == (0, 1, 1)
    assert leak["images"]["examples"][0]["row"] == 2 and leak["images"]["examples"][0]["test_row"] == 1
    assert "WARNING: leakage against" in (tmp_path / "o" / "inspect.html").read_text()
    with pytest.raises(DataError, match=r"--fail-on-leak: WARNING: leakage against .*1 of 4 rows|0 of 4 rows share"):
        STAGES["inspect"].run(build_config(STAGES["inspect"].config,
                                           dict(cfg, out=str(tmp_path / "o2"), fail_on_leak=True)))
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["leakage"]["leak"]  # the report is written
    clean = write_pickapic(tmp_path / "clean", pickapic_rows(3, seed=9, size=(20, 24)))
    ok = STAGES["inspect"].run(build_config(STAGES["inspect"].config,
                                            dict(cfg, out=str(tmp_path / "o3"), against=str(clean),
                                                 against_split=None, fail_on_leak=True)))
    assert not ok["leakage"]["leak"]
    with pytest.raises(ConfigError, match="fail_on_leak: needs --against"):
        build_config(STAGES["inspect"].config, {"dataset": str(train), "fail_on_leak": True})


def test_scorer_accuracy_on_the_hpdv3_test_layout(tmp_path):
    """path1 is the human's choice: red in 3 records, blue (humans preferred the blue image) in 1, so redness is
    right 3/4 and closeness to cyan 1/4; the train.json beside test.json is not read with --split test."""
    folder = write_hpdv3(tmp_path / "hpdv3", n=3, name="train.json", prefix="x")
    write_hpdv3(folder, n=4, name="test.json")
    records = json.loads((folder / "test.json").read_text())
    records[1]["path1"], records[1]["path2"] = records[1]["path2"], records[1]["path1"]
    (folder / "test.json").write_text(json.dumps(records))
    cfg = build_config(STAGES["eval"].config, dict(scorer_accuracy=str(folder), split="test", bootstrap=100,
                                                   scorers="redness,color:cyan", out=str(tmp_path / "acc")))
    result = STAGES["eval"].run(cfg)
    assert result["n_pairs"] == 4
    assert result["scorers"]["redness"]["accuracy"] == 0.75 and result["scorers"]["color:cyan"]["accuracy"] == 0.25
    page = (tmp_path / "acc" / "accuracy.md").read_text()
    assert result["source"] == "hpdv3" and "| redness | 75.0%" in page and "| HPSv3 README (HPDv3 test) |" in page
    from aifeedback.stages.evaluate import accuracy_markdown

    hpsv3 = dict(result, scorers={"hpsv3:tiny": result["scorers"]["redness"]})
    assert "| hpsv3:tiny | 75.0% | " in accuracy_markdown(hpsv3) and accuracy_markdown(hpsv3).endswith("| 76.9% |\n")
    pickapic = dict(result, source="pickapic", scorers={"pickscore": result["scorers"]["redness"]})
    assert "| paper (Pick-a-Pic v2 val) |" in accuracy_markdown(pickapic) and "| 64.2% |" in accuracy_markdown(pickapic)
