"""`aif demo --model toy-sd3`: the same loop on a flow-matching transformer (StableDiffusion3Pipeline trained by
rectified flow), so Diffusion-DPO is seen to work in its flow form (Flow-DPO: velocity errors, winner and loser
sharing noise and sigma). DPO on redness pairs makes held-out images redder; swapped labels make them less red."""

import json
import math
from pathlib import Path

import pytest

from aifeedback.config import build_config
from aifeedback.stages.demo import DemoConfig, run, stage_configs, swap_labels

# As tests/test_demo.py: fewer captions and steps than the demo's defaults, a learning rate that makes the effect of
# 60 steps large enough to test either sign.
SIZES = dict(prompts=32, eval_prompts=32, eval_seeds=4, train_steps=60, lr=3e-4)


@pytest.fixture(scope="module")
def demo(toy_sd3, tmp_path_factory):
    cfg = DemoConfig(model="toy-sd3", out=str(tmp_path_factory.mktemp("demo-flow")), **SIZES)
    return cfg, run(cfg)


@pytest.mark.slow
def test_flow_demo_aligns_the_toy_model_to_redness(demo):
    cfg, report = demo
    redness = report["scorers"]["redness"]
    assert redness["n"] == 32 * 4
    assert redness["win_rate"] >= 0.65 and redness["mean_tuned"] > redness["mean_base"]
    assert report["scorers"]["toy-fidelity"]["mean_base"] >= 0.8  # the base model draws what its captions say
    metrics = [json.loads(line) for line in (Path(cfg.out) / "dpo" / "metrics.jsonl").open()]
    assert len(metrics) == SIZES["train_steps"]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert (Path(cfg.out) / "commands.txt").read_text().startswith("aif generate --model toy-sd3")


@pytest.mark.slow
def test_flow_demo_with_swapped_labels_makes_images_less_red(demo, tmp_path):
    from aifeedback.stages import evaluate, train

    cfg, _ = demo
    configs = stage_configs(cfg)
    swapped = swap_labels(Path(configs["score"].out), tmp_path / "pairs-swapped")
    run_dir = train.run(build_config(train.TrainConfig, {**vars(configs["train"]), "dataset": str(swapped),
                                                         "out": str(tmp_path / "dpo")}))
    report = evaluate.run(build_config(evaluate.EvalConfig, {**vars(configs["eval"]), "tuned": str(run_dir),
                                                             "out": str(tmp_path / "eval")}))
    assert report["scorers"]["redness"]["win_rate"] < 0.35
