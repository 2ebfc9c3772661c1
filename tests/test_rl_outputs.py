"""`aif rl`'s outputs besides the weights: the held-out monitor rewards and diversity in metrics.jsonl, the report
(report.json + report.html, equal after a resume), and the best-vs-worst pairs `aif train --data ai` trains on."""

import json

import pyarrow.parquet as pq
import pytest

from aifeedback.config import build_config
from aifeedback.errors import AifError
from aifeedback.stages import STAGES
from aifeedback.stages.rl_config import RLConfig
from tests.rl_helpers import lora, metrics, prompt_file, run_rl, same_weights

TINY = dict(model="tiny-sd3", prompts_per_epoch=2, group_size=3, steps=2, reward="redness", lora_rank=2, batch_size=3,
            resolution=32, progress=False, lr=1e-2)
MONITOR = "toy-fidelity,brightness"


@pytest.fixture()
def prompts(tmp_path):  # toy captions: what toy-fidelity scores
    return prompt_file(tmp_path, "a red disc on a blue background\na green disc on a yellow background\n"
                       "a blue disc on a red background\n")


def rl(prompts, out, **kw):
    return run_rl(TINY, prompts, out, **kw)


def test_monitor_rewards_are_logged_never_trained_on_and_the_report_survives_a_resume(prompts, tmp_path):
    plain = rl(prompts, tmp_path / "plain", epochs=2)
    watched = rl(prompts, tmp_path / "watched", epochs=2, monitor=MONITOR)
    assert same_weights(lora(plain, 2), lora(watched, 2))  # the monitor rewards change nothing in the training
    m = metrics(watched)
    assert all(0.0 <= r["monitor/toy-fidelity"] <= 1.0 and 0.0 <= r["monitor/brightness"] <= 1.0 for r in m)
    assert all(0.0 < r["diversity"] < 1.0 and 0.0 <= r["all_equal_share"] <= 1.0 for r in m)
    assert [r["reward_mean"] for r in m] == [r["reward_mean"] for r in metrics(plain)]
    shard = pq.read_table(watched / "rollouts" / "data" / "train-00000.parquet").to_pydict()
    assert sum(shard["monitor_brightness"]) / 6 == pytest.approx(m[0]["monitor/brightness"])

    report = json.loads((watched / "report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2] and report["monitor"] == ["toy-fidelity", "brightness"]
    assert len(report["epochs"][0]["grid"]) == 6  # the first 2 prompts' 3 images
    page = (watched / "report.html").read_text()
    assert page.count("<img src=\"data:image/") == 2 and "epoch 2" in page  # one grid per epoch
    assert page.count("<svg") >= 4 and "monitor/toy-fidelity" in page

    resumed = tmp_path / "resumed"
    rl(prompts, resumed, epochs=1, monitor=MONITOR)
    assert len(json.loads((resumed / "report.json").read_text())["epochs"]) == 1
    rl(prompts, resumed, epochs=2, monitor=MONITOR)
    assert (resumed / "report.json").read_text() == (watched / "report.json").read_text()
    assert (resumed / "report.html").read_text() == page


def test_a_monitor_that_is_also_the_reward_or_misspelt_is_refused(prompts, tmp_path):
    with pytest.raises(AifError, match="--monitor redness: it is also a --reward"):
        build_config(RLConfig, dict(TINY, monitor="brightness,redness"))
    with pytest.raises(AifError, match="brigthness"):
        rl(prompts, tmp_path / "run", monitor="brigthness")
    assert not (tmp_path / "run").exists()


def test_an_rl_run_is_training_data_for_aif_train_data_ai(prompts, tmp_path):
    from pairs_fixtures import read_metrics, tiny_train

    out = rl(prompts, tmp_path / "rl", epochs=1)
    pairs = pq.read_table(out / "pairs" / "data" / "train-00000.parquet").to_pydict()
    rollout = pq.read_table(out / "rollouts" / "data" / "train-00000.parquet").to_pydict()
    for i, caption in enumerate(pairs["caption"]):  # per group: its best vs its worst image by the reward
        group = [r for p, r in zip(rollout["prompt"], rollout["reward"], strict=True) if p == caption]
        best = max(pairs["score_0"][i], pairs["score_1"][i])
        assert (best, min(pairs["score_0"][i], pairs["score_1"][i])) == (max(group), min(group))
        assert pairs["label_0"][i] == float(pairs["score_0"][i] == best)
        assert rollout["image"][rollout["prompt"].index(caption) + pairs["k_0"][i]] == pairs["jpg_0"][i]
    assert len(pairs["caption"]) == 2
    run = STAGES["train"].run(tiny_train(out, tmp_path / "train", data="ai", model="tiny-sd3", max_steps=1,
                                         checkpoint_every=1, lora_rank=2))
    assert [r["step"] for r in read_metrics(run)] == [1]


def test_a_long_runs_report_shows_evenly_spaced_grids_with_the_first_and_last_epoch():
    from aifeedback.stages.rl_report import grid_epochs

    assert grid_epochs([1, 2, 3], most=4) == [1, 2, 3]
    assert grid_epochs(list(range(1, 101)), most=5) == [1, 26, 51, 75, 100]


def test_an_rl_run_that_trained_on_is_other_data_for_a_train_run_on_it(prompts, tmp_path):
    """A run extended with more epochs has more pairs under the same job fingerprint: a train rerun on it must not
    resume as if its data were the same."""
    from pairs_fixtures import tiny_train

    out = rl(prompts, tmp_path / "rl", epochs=1)
    values = dict(data="ai", model="tiny-sd3", max_steps=1, checkpoint_every=1, lora_rank=2)
    STAGES["train"].run(tiny_train(out, tmp_path / "train", **values))
    rl(prompts, tmp_path / "rl", epochs=2)
    with pytest.raises(AifError, match="different training job \\(differs in: input dataset_epochs: 1 -> 2\\)"):
        STAGES["train"].run(tiny_train(out, tmp_path / "train", **dict(values, max_steps=2)))


def test_overwrite_leaves_no_pairs_or_report_of_the_old_run(prompts, tmp_path):
    out = rl(prompts, tmp_path / "run", epochs=2)
    rl(prompts, out, epochs=1, overwrite=True, seed=1)
    assert [p.name for p in sorted((out / "pairs" / "data").iterdir())] == ["train-00000.parquet"]
    assert len(json.loads((out / "report.json").read_text())["epochs"]) == 1


def test_rollout_k_is_the_index_in_its_group_when_the_prompt_list_cycles(prompts, tmp_path):
    """P = 4 prompts of a 3-prompt list: the first prompt is sampled twice in the epoch, as two groups of G = 3.
    Seen failing before: k was taken modulo the prompt's count in the epoch (6), not the group size."""
    out = rl(prompts, tmp_path / "run", epochs=1, prompts_per_epoch=4, batch_size=3)
    rollout = pq.read_table(out / "rollouts" / "data" / "train-00000.parquet").to_pydict()
    assert rollout["k"] == [0, 1, 2] * 4
    assert rollout["prompt"][0] == rollout["prompt"][9] != rollout["prompt"][3]
