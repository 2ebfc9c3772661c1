"""`aif eval` on the tiny SD1.5 model with tiny scorers: self-eval ties, a perturbed UNet, resume, HTML, accuracy."""

import base64
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aifeedback.config import build_config
from aifeedback.errors import DataError
from aifeedback.stages.evaluate import EvalConfig, preference_pairs, run
from aifeedback.storage.manifest import OutputConflictError
from aifeedback.storage.shards import shard_files
from tests.launch import accelerate_launch, run_group
from tests.test_sample import perturbed_unet

ROOT = Path(__file__).resolve().parents[1]
SCORERS = "redness,pickscore:tiny,clip:tiny"


def _cfg(out, base, tuned, **kw):
    values = dict(base=str(base), tuned=str(tuned), prompts="parti", limit=3, seeds_per_prompt=2, steps=2,
                  resolution=16, scorers=SCORERS, examples=2, sample_prompts=2, thumb=32, bootstrap=500,
                  out=str(out))
    return build_config(EvalConfig, {**values, **kw})


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def check_html(path: Path, n_images: int) -> None:
    """The page has its tables and chart, and every image is embedded and decodes."""
    page = _Page()
    page.feed(path.read_text())
    assert page.tags.count("table") == 3 and "svg" in page.tags  # setup, scorers, PartiPrompts categories
    assert len(page.srcs) == n_images
    for src in page.srcs:
        assert src.startswith("data:image/")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).load()


def test_eval_of_a_model_against_itself_is_exactly_even(tmp_path, tiny_sd15):
    # tuned = the base pipeline's own UNet folder: the same weights through the --tuned loading path.
    report = run(_cfg(tmp_path / "eval", tiny_sd15, tiny_sd15 / "unet"))
    assert report["n_prompts"] == 3 and report["n_comparisons"] == 6
    assert set(report["scorers"]) == set(SCORERS.split(","))
    for name, s in report["scorers"].items():
        assert (s["win_rate"], s["ci_low"], s["ci_high"], s["ties"], s["n"]) == (0.5, 0.5, 0.5, 6, 6), name
        assert s["mean_base"] == s["mean_tuned"]
        assert all(c["win_rate"] == 0.5 for c in s["by_category"].values())
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["scorers"]["redness"]["win_rate"] == 0.5 and saved["ci_method"].startswith("percentile bootstrap")
    check_html(tmp_path / "eval" / "report.html", 2 * (2 + 2 + 2))


def test_eval_against_a_perturbed_unet_and_rerun(tmp_path, tiny_sd15):
    tuned = perturbed_unet(tiny_sd15, tmp_path / "tuned_unet")
    out = tmp_path / "eval"
    report = run(_cfg(out, tiny_sd15, tuned))
    red = report["scorers"]["redness"]
    assert red["mean_base"] != red["mean_tuned"] and red["ties"] < red["n"]
    for s in report["scorers"].values():
        assert 0 <= s["ci_low"] <= s["win_rate"] <= s["ci_high"] <= 1
        assert s["wins"] + s["ties"] + s["losses"] == s["n"] == 6
        assert sum(c["n"] for c in s["by_category"].values()) == 6
    best, worst = report["examples"]["best"][0], report["examples"]["worst"][0]
    assert best["margin"] >= worst["margin"]
    md = (out / "report.md").read_text()
    assert "| redness |" in md and "## By category" in md
    for group in ("best", "worst", "sample"):
        Image.open(out / "grids" / f"{group}.png").load()
    check_html(out / "report.html", 2 * (2 + 2 + 2))

    # Rerun with other scorers: the images are reused (no shard rewritten), only the scoring runs again.
    shards = {p: p.stat().st_mtime_ns for side in ("base", "tuned") for p in shard_files(out / side)}
    again = run(_cfg(out, tiny_sd15, tuned, scorers="redness,brightness"))
    assert {p: p.stat().st_mtime_ns for p in shards} == shards
    assert again["scorers"]["redness"] == red and list(again["scorers"]) == ["redness", "brightness"]

    # Other generation settings into the same folder: refused, naming what differs.
    with pytest.raises(OutputConflictError, match="seed"):
        run(_cfg(out, tiny_sd15, tuned, seed=3))


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_scorer_accuracy_against_known_labels(tmp_path):
    # Image 0 is redder than image 1 in every pair. Humans prefer the redder image in 6 of 8 decisive pairs;
    # two more pairs are human ties and must be dropped. So redness is right 6/8 = 75%, and its mirror image,
    # "color:cyan" (closeness to cyan), is right 2/8.
    labels = [1, 1, 1, 0, 1, 1, 0, 1, 0.5, 0.5]
    rows = [{"caption": f"pair {i}", "jpg_0": _png((200, 10 * i, 0)), "jpg_1": _png((10 * i, 90, 90)),
             "label_0": float(lab), "label_1": 1.0 - lab} for i, lab in enumerate(labels)]
    data = tmp_path / "pickapic" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:5]), data / "validation-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[5:]), data / "validation-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), data / "train-00000-of-00001.parquet")

    result = run(build_config(EvalConfig, dict(scorer_accuracy=str(tmp_path / "pickapic"), split="validation",
                                               scorers="redness,color:cyan", bootstrap=200, out=str(tmp_path / "acc"))))
    assert result["n_pairs"] == 8
    assert result["scorers"]["redness"]["accuracy"] == 0.75 and result["scorers"]["color:cyan"]["accuracy"] == 0.25
    assert json.loads((tmp_path / "acc" / "accuracy.json").read_text())["scorers"]["redness"]["n"] == 8
    assert "| redness | 75.0%" in (tmp_path / "acc" / "accuracy.md").read_text()
    assert len(list(preference_pairs(str(tmp_path / "pickapic"), "validation", limit=3))) == 3
    assert len(list(preference_pairs(str(tmp_path / "pickapic")))) == 9  # all splits

    pq.write_table(pa.Table.from_pylist([{"caption": "x", "jpg_0": b""}]), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet lacks the Pick-a-Pic column"):
        list(preference_pairs(str(tmp_path / "bad.parquet")))
    with pytest.raises(DataError, match="no such file"):
        list(preference_pairs(str(tmp_path / "missing")))


def test_scorer_accuracy_names_the_pair_and_side_of_an_unreadable_image(tmp_path):
    rows = [{"caption": f"pair {i}", "jpg_0": _png((200, 0, 0)), "jpg_1": _png((0, 90, 90)) if i != 2 else b"junk",
             "label_0": 1.0, "label_1": 0.0} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    cfg = build_config(EvalConfig, dict(scorer_accuracy=str(tmp_path / "pairs.parquet"), scorers="redness",
                                        bootstrap=100, out=str(tmp_path / "acc")))
    with pytest.raises(DataError, match="pair 2, jpg_1 image: cannot decode image"):
        run(cfg)


def score_output(tmp_path: Path) -> Path:
    """An `aif score` output (pairs in data/, per-image scores in image_scores/) labelled by redness."""
    from aifeedback.stages.score import run as score
    from tests.test_score import cfg as score_cfg
    from tests.test_score import make_generate_dir

    make_generate_dir(tmp_path / "gen")
    score(score_cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer=["redness"]))
    assert list((tmp_path / "pairs" / "image_scores").glob("*.parquet"))
    return tmp_path / "pairs"


def test_scorer_accuracy_on_an_aif_score_output(tmp_path):
    # Its pairs were labelled by redness, so redness agrees with every label; the per-image scores are not pairs.
    pairs = score_output(tmp_path)
    result = run(build_config(EvalConfig, dict(scorer_accuracy=str(pairs), scorers="redness,brightness",
                                               bootstrap=100, out=str(tmp_path / "acc"))))
    n = sum(pq.read_metadata(f).num_rows for f in shard_files(pairs))
    assert result["n_pairs"] == n == 4  # best-worst: one pair per prompt
    assert result["scorers"]["redness"]["accuracy"] == 1.0


def test_scorer_accuracy_checks_every_input_before_loading_a_scorer(tmp_path, monkeypatch):
    import aifeedback.scoring.scorers
    from aifeedback.scoring.scorers import UnknownScorerError
    from tests.test_score import make_generate_dir

    def refuse(*args, **kwargs):
        raise AssertionError("a scorer was loaded before the inputs were checked")

    monkeypatch.setattr(aifeedback.scoring.scorers, "load_scorer", refuse)
    good = {"caption": "x", "jpg_0": _png((200, 0, 0)), "jpg_1": _png((0, 0, 200)), "label_0": 1.0, "label_1": 0.0}
    data = tmp_path / "set"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist([good] * 3), data / "validation-00000.parquet")
    pq.write_table(pa.Table.from_pylist([{"caption": "x", "jpg_0": b""}]), data / "validation-00001.parquet")

    def accuracy(source, scorers="redness"):
        values = dict(scorer_accuracy=str(source), scorers=scorers, out=str(tmp_path / "o"))
        return run(build_config(EvalConfig, values))

    with pytest.raises(DataError, match="validation-00001.parquet lacks the Pick-a-Pic column"):  # the 2nd file
        accuracy(data)
    with pytest.raises(DataError, match="neither a local path nor a hub dataset id"):
        accuracy(tmp_path / "missing")
    make_generate_dir(tmp_path / "gen")
    with pytest.raises(DataError, match="holds a 'generate' output; it needs labelled pairs"):
        accuracy(tmp_path / "gen")
    (data / "validation-00001.parquet").unlink()
    with pytest.raises(UnknownScorerError, match="rednes"):
        accuracy(data, "redness,rednes")
    assert not (tmp_path / "o").exists()  # nothing was written either


def test_eval_checks_scorers_and_models_before_generating(tmp_path, monkeypatch):
    import aifeedback.families.loading
    from aifeedback.families.resolve import ModelLoadError, TunedLoadError
    from aifeedback.scoring.scorers import UnknownScorerError

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(aifeedback.families.loading, "load_pipeline", refuse)
    out = tmp_path / "eval"
    with pytest.raises(UnknownScorerError, match="rednes"):
        run(_cfg(out, "tiny-sd15", "tiny-sd15", scorers="redness,rednes"))
    with pytest.raises(TunedLoadError, match="does not exist"):
        run(_cfg(out, "tiny-sd15", tmp_path / "missing.safetensors"))
    with pytest.raises(ModelLoadError, match="base model .* no such local folder"):
        run(_cfg(out, tmp_path / "missing", "tiny-sd15"))
    assert not out.exists()


def test_tuned_may_be_a_whole_model(tmp_path, tiny_sd15):
    from aifeedback.families.loading import load_pipeline

    # The same tiny name as base and tuned: the same images, so every comparison is a tie.
    same = run(_cfg(tmp_path / "same", "tiny-sd15", "tiny-sd15", limit=2, seeds_per_prompt=1))
    for name, s in same["scorers"].items():
        assert (s["win_rate"], s["ties"], s["n"]) == (0.5, 2, 2), name
    # A whole pipeline folder (save_pretrained) with a changed UNet is generated as it is, not as weights.
    import torch

    pipe = load_pipeline("tiny-sd15")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.5 * p.std().nan_to_num(0) * torch.randn_like(p))
    pipe.save_pretrained(tmp_path / "pipe")
    other = run(_cfg(tmp_path / "other", "tiny-sd15", tmp_path / "pipe", limit=2, seeds_per_prompt=1))
    tuned = json.loads((tmp_path / "other" / "tuned" / "manifest.json").read_text())["config"]
    assert (tuned["model"], tuned["tuned"]) == (str(tmp_path / "pipe"), None)
    assert other["scorers"]["redness"]["ties"] < 2


def test_is_pipeline_tells_models_from_weights(tmp_path, tiny_sd15, monkeypatch):
    from huggingface_hub import constants

    from aifeedback.families.resolve import is_pipeline, resolve_tuned

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert is_pipeline("tiny-sdxl") and is_pipeline(str(tiny_sd15))
    for weights in (tiny_sd15 / "unet", tmp_path / "run", tmp_path / "lora.safetensors", "./missing"):
        assert not is_pipeline(str(weights)), weights
    assert resolve_tuned("tiny-sd15") == ("unet", str(tiny_sd15 / "unet"))  # as weights (aif generate --tuned)
    # Hub ids, from a Hugging Face cache (the tests are offline): a pipeline repo, and a repo with only unet/.
    for repo, file in (("someone/pipe", "model_index.json"), ("someone/dpo-unet", "unet/config.json")):
        snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
        (snapshot / file).parent.mkdir(parents=True)
        (snapshot / file).write_text("{}")
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert is_pipeline("someone/pipe") and not is_pipeline("someone/dpo-unet")
    assert not is_pipeline("nobody/not-cached")  # offline and not cached: taken for weights, whose loading explains


def test_config_errors_name_the_fix():
    from aifeedback.config import ConfigError

    with pytest.raises(ConfigError, match="base: required"):
        build_config(EvalConfig, {"tuned": "x", "out": "o"})


@pytest.mark.slow  # three processes starting torch (~20 s of CPU); test_score and test_train cover launch by default
def test_eval_under_accelerate_launch_matches_one_process(tmp_path, tiny_sd15):
    tuned = perturbed_unet(tiny_sd15, tmp_path / "tuned_unet")
    # the same generation and scoring batches as the two processes below (each scores every other batch of 2): a
    # scorer's output depends on its batch's shape by float noise, which could flip a near-tie in the exact checks
    one = run(_cfg(tmp_path / "one", tiny_sd15, tuned, batch_size=1, scorer_batch_size=2))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [*accelerate_launch(2), "eval", "--base", str(tiny_sd15), "--tuned", str(tuned), "--prompts", "parti",
           "--limit", "3", "--seeds-per-prompt", "2", "--steps", "2", "--resolution", "16", "--scorers", SCORERS,
           "--scorer-batch-size", "2", "--batch-size", "1", "--bootstrap", "500", "--examples", "2",
           "--sample-prompts", "2", "--thumb", "32", "--out", str(tmp_path / "two")]
    proc = run_group(cmd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["counts"]["processes"] == 2
    for name, s in one["scorers"].items():
        for key in ("win_rate", "ci_low", "ci_high", "n", "wins", "ties", "losses"):
            assert two["scorers"][name][key] == s[key], (name, key)
        # Scores are float32 (cosines of unit vectors for clip): one ulp near 1 is 6e-8, and the processes sum them
        # in another order, so a mean near 0 can only be compared absolutely (it moved 1.3e-8 on an AMD EPYC).
        assert two["scorers"][name]["mean_tuned"] == pytest.approx(s["mean_tuned"], rel=1e-5, abs=1e-6)
    check_html(tmp_path / "two" / "report.html", 2 * (2 + 2 + 2))
