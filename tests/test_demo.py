"""`aif demo` end to end on the toy model: DPO on redness pairs makes held-out images redder, and the same loop with
winner and loser swapped makes them less red. This is the test that fails when the training signal is wrong."""

import json
import math
from pathlib import Path

import pytest

from aifeedback.config import ConfigError, build_config
from aifeedback.stages.demo import DemoConfig, run, stage_configs, swap_labels

# Smaller than the demo's defaults (64 captions, 150 steps) to keep the suite fast, at a higher learning rate (the
# demo's 5e-5 keeps prompt fidelity; 3e-4 makes the effect of fewer steps large enough to test either sign).
SIZES = dict(prompts=32, eval_prompts=32, eval_seeds=4, train_steps=60, lr=3e-4)


@pytest.fixture(scope="module")
def demo(toy_sd15, tmp_path_factory):
    cfg = DemoConfig(out=str(tmp_path_factory.mktemp("demo")), **SIZES)
    return cfg, run(cfg)


@pytest.mark.numerics
def test_demo_aligns_the_toy_model_to_redness(demo, capsys):
    cfg, report = demo
    out = stage_configs(cfg)["eval"].out
    assert report["scorers"]["redness"]["n"] == 32 * 4
    assert report["scorers"]["redness"]["win_rate"] > 0.65
    assert report["scorers"]["redness"]["mean_tuned"] > report["scorers"]["redness"]["mean_base"]
    assert report["scorers"]["toy-fidelity"]["mean_base"] >= 0.8  # the base model draws what its captions say
    html = (Path(out) / "report.html").read_text()
    assert html.count('alt="tuned"') >= 8  # base and tuned side by side
    metrics = [json.loads(line) for line in (Path(cfg.out) / "dpo" / "metrics.jsonl").open()]
    assert len(metrics) == SIZES["train_steps"]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1


@pytest.mark.numerics
def test_demo_with_swapped_labels_makes_images_less_red(demo, tmp_path):
    from aifeedback.stages import evaluate, train

    cfg, _ = demo
    configs = stage_configs(cfg)
    swapped = swap_labels(Path(configs["score"].out), tmp_path / "pairs-swapped")
    run_dir = train.run(build_config(train.TrainConfig, {**vars(configs["train"]), "dataset": str(swapped),
                                                         "out": str(tmp_path / "dpo")}))
    report = evaluate.run(build_config(evaluate.EvalConfig, {**vars(configs["eval"]), "tuned": str(run_dir),
                                                             "out": str(tmp_path / "eval")}))
    assert report["scorers"]["redness"]["win_rate"] < 0.35


def test_demo_rerun_reuses_every_stage(demo, capsys):
    cfg, report = demo
    again = run(cfg)
    assert again["scorers"]["redness"]["win_rate"] == report["scorers"]["redness"]["win_rate"]
    printed = capsys.readouterr().out
    assert "redness" in printed and "report.html" in printed and "(cached)" in printed
    fid = report["scorers"]["toy-fidelity"]
    assert f"base {100 * fid['mean_base']:.1f}% -> tuned {100 * fid['mean_tuned']:.1f}%" in printed
    assert (Path(cfg.out) / "commands.txt").read_text().startswith("aif generate --model toy-sd15")


def test_demo_config_refuses_more_captions_than_the_toy_world_has():
    with pytest.raises(ConfigError, match="132 distinct captions"):
        build_config(DemoConfig, {"prompts": 100, "eval_prompts": 64})


def test_demo_loss_option_picks_the_loss_and_its_own_toy_beta(tmp_path):
    from aifeedback.losses import LOSSES

    for name, loss in LOSSES.items():
        train = stage_configs(build_config(DemoConfig, {"out": str(tmp_path), "loss": name}))["train"]
        assert (train.loss, train.beta, train.lr) == (name, loss.toy_beta, loss.toy_lr)
        assert train.out == str(tmp_path / name)
    mapo = stage_configs(build_config(DemoConfig, {"out": str(tmp_path), "loss": "mapo"}))["train"]
    assert mapo.beta == pytest.approx(0.1)  # MaPO's paper value: DPO's 2000 would be refused by train
    given = stage_configs(build_config(DemoConfig, {"out": str(tmp_path), "loss": "mapo", "beta": 0.5, "lr": 1e-3}))
    assert (given["train"].beta, given["train"].lr) == (0.5, 1e-3)
    with pytest.raises(ConfigError, match="did you mean|valid|must be one of"):
        build_config(DemoConfig, {"loss": "dop"})


def test_swap_labels_exchanges_winner_and_loser_and_the_fingerprint(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.pairs_fixtures import pickapic_rows, write_score_dir

    src = write_score_dir(tmp_path / "pairs", pickapic_rows(4))
    (src / "unpaired").mkdir()
    pq.write_table(pa.table({"caption": ["a", "b"], "desirable": [True, False]}), src / "unpaired" / "images.parquet")
    swapped = swap_labels(src, tmp_path / "pairs-swapped")
    assert pq.read_table(swapped / "unpaired" / "images.parquet").column("desirable").to_pylist() == [False, True]
    before = pq.read_table(next((src / "data").glob("*.parquet"))).to_pylist()
    after = pq.read_table(next((swapped / "data").glob("*.parquet"))).to_pylist()
    assert [(r["label_0"], r["label_1"]) for r in after] == [(r["label_1"], r["label_0"]) for r in before]
    assert [r["jpg_0"] for r in after] == [r["jpg_0"] for r in before]  # only the labels move
    assert json.loads((swapped / "manifest.json").read_text())["fingerprint"] != "test"
    cfg = build_config(DemoConfig, {"out": str(tmp_path), "loss": "hinge", "swap_labels": True})
    configs = stage_configs(cfg)
    assert configs["train"].dataset == str(tmp_path / "pairs-swapped")
    assert configs["train"].out == str(tmp_path / "hinge-swapped") == configs["eval"].tuned
    assert configs["eval"].out == str(tmp_path / "eval-hinge-swapped")
    default = stage_configs(build_config(DemoConfig, {"out": str(tmp_path)}))
    assert (default["train"].out, default["eval"].out) == (str(tmp_path / "dpo"), str(tmp_path / "eval"))
    kto = stage_configs(build_config(DemoConfig, {"out": str(tmp_path), "loss": "kto", "swap_labels": True}))
    assert kto["train"].dataset == str(tmp_path / "pairs-swapped" / "unpaired")  # the per-image labels
    assert default["score"].unpaired and kto["score"] == default["score"]  # one score output for every loss
