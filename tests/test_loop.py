"""`aif loop`: rounds of the ordinary stages on the current policy's samples. A cheap 2-round LoRA loop on
tiny-sd15 (1 step per round), killed inside round 2 and resumed, its report against the stages' own outputs, and
the pure helpers (round bookkeeping, the diversity measure, the charts) against hand computations."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aifeedback.config import ConfigError, build_config
from aifeedback.evaluation.diversity import diversity, pixels, prompt_diversity, rms_distance
from aifeedback.evaluation.rounds import build_loop_report, line_chart, render_loop_html
from aifeedback.stages import STAGES, Stage
from aifeedback.stages.loop import summary
from aifeedback.stages.loop_config import LoopConfig
from aifeedback.stages.loop_rounds import ROUND_STAGES, finished_rounds, policy, position, stage_dir, stage_done
from aifeedback.storage.checkpoints import STATE_FILE
from aifeedback.storage.shards import read_rows

TINY = dict(rounds=2, toy_prompts=2, toy_eval_prompts=2, images_per_prompt=2, eval_seeds=2, sampling_steps=2,
            train_steps=1, batch_size=2, lora_rank=2, fidelity="toy-fidelity", image_batch_size=8, progress=False)


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def loop(tiny_sd15, tmp_path_factory):
    """A 2-round loop killed when round 2's train starts, then rerun: (cfg, report, the stages the rerun ran)."""
    import aifeedback.stages.train as train

    cfg = build_config(LoopConfig, dict(TINY, model=tiny_sd15, out=str(tmp_path_factory.mktemp("loop"))))
    mp = pytest.MonkeyPatch()
    real = train.run

    def killed_in_round_2(tcfg):
        if "round-02" in tcfg.out:
            raise Killed("simulated kill")
        return real(tcfg)

    mp.setattr(train, "run", killed_in_round_2)
    with pytest.raises(Killed):
        STAGES["loop"].run(cfg)
    mp.setattr(train, "run", real)
    ran = []
    stage_run = Stage.run
    mp.setattr(Stage, "run", lambda self, c: ran.append((self.name, Path(c.out).relative_to(cfg.out).as_posix()))
               or stage_run(self, c))
    report = STAGES["loop"].run(cfg)
    mp.undo()
    return cfg, report, ran


def test_loop_resumes_at_the_stage_where_it_was_killed(loop):
    cfg, report, ran = loop
    # round 1 and round 2's generate and score were finished: the rerun starts at round 2's train
    assert ran == [("loop", "."), ("train", "round-02/train"), ("export", "round-02/export"), ("eval", "round-02/eval")]
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert position(cfg.out, 2) is None


def test_loop_trains_round_2_from_round_1s_weights(loop):
    cfg, _, _ = loop
    out = Path(cfg.out)
    gen = json.loads((stage_dir(out, 2, "generate") / "manifest.json").read_text())
    assert gen["config"]["model"] == str(stage_dir(out, 1, "export"))  # round 2 samples from round 1's model
    assert (stage_dir(out, 1, "export") / "model_index.json").is_file()  # a whole pipeline, LoRA fused
    train2 = json.loads((stage_dir(out, 2, "train") / "manifest.json").read_text())["config"]
    assert train2["model"] == cfg.model  # --reference base: the reference stays the base model...
    metrics = [json.loads(ln) for ln in (stage_dir(out, 2, "train") / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [2]  # ... and the policy continues round 1's run (step 1 -> 2)
    ev = json.loads((stage_dir(out, 2, "eval") / "manifest.json").read_text())["config"]
    assert ev["base"] == cfg.model and ev["tuned"] == str(stage_dir(out, 2, "export"))


def test_loop_report_numbers_are_the_stages_outputs(loop):
    cfg, report, _ = loop
    out = Path(cfg.out)
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    for rec in report["rounds"]:
        r = rec["round"]
        summary = json.loads((stage_dir(out, r, "score") / "summary.json").read_text())
        ev = json.loads((stage_dir(out, r, "eval") / "report.json").read_text())["scorers"]
        assert rec["samples"]["mean_reward"] == summary["scores"]["redness"]["mean"]
        assert rec["samples"]["model"] == (cfg.model if r == 1 else str(stage_dir(out, r - 1, "export")))
        assert rec["samples"]["images"] == 2 * 2 and rec["samples"]["pairs"] == summary["counts"]["pairs"]
        for key in ("win_rate", "ci_low", "ci_high", "mean_base", "mean_tuned", "n"):
            assert rec["eval"][key] == ev["redness"][key]
        assert rec["eval"]["fidelity_tuned"] == ev["toy-fidelity"]["mean_tuned"]
        # diversity by hand: per prompt, the RMS difference of its two images (32 px, no shrinking), then the mean
        for key, folder in (("diversity", stage_dir(out, r, "generate")),):
            by_prompt = {}
            for row in read_rows(folder, ["prompt_id", "image"]):
                by_prompt.setdefault(row["prompt_id"], []).append(pixels(row["image"]))
            hand = np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in by_prompt.values()])
            assert rec["samples"][key] == pytest.approx(hand, rel=1e-12)  # same arithmetic, other order
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4 and "prompt fidelity" in html


def test_a_finished_loop_reruns_as_already_complete(loop, monkeypatch, capsys):
    cfg, report, _ = loop
    ran, stage_run = [], Stage.run
    monkeypatch.setattr(Stage, "run", lambda self, c: ran.append(self.name) or stage_run(self, c))
    assert STAGES["loop"].run(cfg) == report
    assert ran == ["loop"] and "already complete" in capsys.readouterr().out


def test_raising_rounds_runs_only_the_new_round(loop, tmp_path, monkeypatch):
    import shutil

    cfg, report, _ = loop
    copy = tmp_path / "loop"
    shutil.copytree(cfg.out, copy)  # a copy: the other tests read the 2-round folder
    ran, stage_run = [], Stage.run
    monkeypatch.setattr(Stage, "run", lambda self, c: ran.append(Path(c.out).relative_to(copy).as_posix())
                        or stage_run(self, c))
    more = STAGES["loop"].run(build_config(LoopConfig, {**vars(cfg), "out": str(copy), "rounds": 3}))
    assert ran == ["."] + [f"round-03/{s}" for s in ROUND_STAGES]
    assert more["rounds"][:2] == report["rounds"] and more["rounds"][2]["round"] == 3


def test_loop_refuses_another_loop_in_the_same_folder(loop):
    from aifeedback.storage.manifest import OutputConflictError

    cfg, _, _ = loop
    with pytest.raises(OutputConflictError, match="images_per_prompt: 2 -> 3"):
        STAGES["loop"].run(build_config(LoopConfig, {**vars(cfg), "images_per_prompt": 3}))


def test_reference_previous_trains_a_fresh_full_run_on_the_previous_model(tiny_sd15, tmp_path):
    cfg = build_config(LoopConfig, dict(TINY, model=tiny_sd15, out=str(tmp_path), lora_rank=0, reference="previous"))
    report = STAGES["loop"].run(cfg)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    train2 = json.loads((stage_dir(tmp_path, 2, "train") / "manifest.json").read_text())["config"]
    assert train2["model"] == str(stage_dir(tmp_path, 1, "export"))  # policy and reference start at round 1's model
    metrics = [json.loads(ln) for ln in (stage_dir(tmp_path, 2, "train") / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [1]  # a fresh run
    assert metrics[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # policy == reference at its step 1
    assert (stage_dir(tmp_path, 2, "export") / "unet").is_dir()


@pytest.mark.slow  # two processes starting torch (~30 s of CPU)
def test_loop_under_accelerate_launch(tiny_sd15, tmp_path):
    """Every stage splits its work across the processes; export (one folder) runs on the main process only."""
    import os

    from tests.launch import accelerate_launch, run_group

    flags = [x for k, v in {**TINY, "model": tiny_sd15, "out": tmp_path}.items() if k != "progress"
             for x in (f"--{k.replace('_', '-')}", str(v))]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    result = run_group([*accelerate_launch(2), "loop", *flags, "--no-progress"], env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    train = json.loads((stage_dir(tmp_path, 2, "train") / "manifest.json").read_text())
    assert train["counts"]["processes"] == 2


# ---- pure helpers -------------------------------------------------------------------------------------------

def _finish(out: Path, r: int, stage: str) -> None:
    folder = stage_dir(out, r, stage)
    folder.mkdir(parents=True, exist_ok=True)
    if stage == "export":
        (folder / "model_index.json").write_text("{}")
    else:
        (folder / "manifest.json").write_text(json.dumps({"stage": stage, "complete": True}))


def test_position_is_the_first_unfinished_stage(tmp_path):
    assert position(tmp_path, 2) == (1, "generate")
    for stage in ROUND_STAGES:
        _finish(tmp_path, 1, stage)
    _finish(tmp_path, 2, "generate")
    (stage_dir(tmp_path, 2, "score")).mkdir()
    (stage_dir(tmp_path, 2, "score") / "manifest.json").write_text(json.dumps({"stage": "score", "complete": False}))
    assert position(tmp_path, 2) == (2, "score")
    assert position(tmp_path, 1) is None
    assert finished_rounds(tmp_path) == [1]
    (stage_dir(tmp_path, 2, "score") / "manifest.json").write_text('{"stage": "sco')  # torn by a kill
    assert not stage_done(stage_dir(tmp_path, 2, "score"), "score")
    _finish(tmp_path, 2, "train")  # a train folder holding a finished *eval* manifest is not a finished train
    (stage_dir(tmp_path, 2, "train") / "manifest.json").write_text(json.dumps({"stage": "eval", "complete": True}))
    assert not stage_done(stage_dir(tmp_path, 2, "train"), "train")


def test_round_folders_and_policies(tmp_path):
    assert stage_dir(tmp_path, 3, "eval") == tmp_path / "round-03" / "eval"
    assert policy(tmp_path, "toy-sd15", 1) == "toy-sd15"
    assert policy(tmp_path, "toy-sd15", 3) == str(tmp_path / "round-02" / "export")
    with pytest.raises(ValueError, match="count from 1"):
        stage_dir(tmp_path, 0, "eval")


def test_train_settings_per_reference(tmp_path):
    from aifeedback.stages.loop import train_values

    base = {"out": str(tmp_path), "resolution": 8, "train_steps": 5, "seed": 3}
    prev = train_values(build_config(LoopConfig, {**base, "reference": "previous"}), 2)
    assert (prev["model"], prev["max_steps"], prev["seed"]) == (str(stage_dir(tmp_path, 1, "export")), 5, 4)
    assert "resume" not in prev  # a fresh run on round 1's model: policy and reference start there
    cfg = build_config(LoopConfig, {**base, "reference": "base"})
    with pytest.raises(Exception, match="no checkpoint to continue round 2"):
        train_values(cfg, 2)
    ckpt = stage_dir(tmp_path, 1, "train") / "checkpoints" / "checkpoint-000005"
    ckpt.mkdir(parents=True)
    (ckpt / STATE_FILE).write_text("{}")
    cont = train_values(cfg, 2)
    assert (cont["model"], cont["max_steps"], cont["resume"]) == ("toy-sd15", 10, str(ckpt))
    own = stage_dir(tmp_path, 2, "train") / "checkpoints" / "checkpoint-000007"
    own.mkdir(parents=True)
    (own / STATE_FILE).write_text("{}")
    assert train_values(cfg, 2)["resume"] == "auto"  # killed after a checkpoint of its own: continue that


def test_diversity_against_hand_computation():
    a = np.zeros((2, 2, 3))
    b = np.ones((2, 2, 3))
    c = np.full((2, 2, 3), 0.5)
    assert rms_distance(a, b) == 1.0
    assert prompt_diversity([a, b, c]) == pytest.approx((1.0 + 0.5 + 0.5) / 3, abs=1e-15)
    out = diversity({"p": [a, a], "q": [a, b], "single": [c]})  # a prompt with one image says nothing
    assert out == {"mean": 0.5, "prompts": 2}
    assert diversity({}) == {"mean": None, "prompts": 0}
    with pytest.raises(ValueError, match="different sizes"):
        rms_distance(a, np.zeros((3, 3, 3)))


def test_pixels_shrink_large_images_to_a_thumbnail():
    img = Image.new("RGB", (128, 64), (255, 0, 0))
    arr = pixels(img)
    assert arr.shape == (16, 32, 3) and arr[..., 0].min() == 1.0 and arr[..., 1].max() == 0.0
    assert pixels(Image.new("RGB", (8, 8))).shape == (8, 8, 3)  # small images stay as they are


def test_line_chart_is_valid_svg_with_a_point_per_round():
    svg = line_chart("reward <x>", [("a & b", "#000", [(1, 0.1, 0.0, 0.2), (2, 0.3, None, None)])], 0.2)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}circle")) == 2 and len(root.findall(f"{ns}polyline")) == 1
    html = render_loop_html({"model": "m", "scorer": "s", "fidelity": None, "base": {}, "rounds": []})
    assert html.count("<svg") == 3  # no fidelity chart without a fidelity scorer


def test_one_eval_seed_summary_shows_no_diversity_instead_of_crashing():
    """`--eval-seeds 1`: one eval image per prompt and model, so the eval's diversity is undefined (None)."""
    one_each = diversity({"p": [np.zeros((2, 2, 3))], "q": [np.ones((2, 2, 3))]})["mean"]
    assert one_each is None
    rec = {"round": 1, "samples": {"model": "m", "images": 4, "pairs": 2, "mean_reward": 0.25, "diversity": 0.125},
           "eval": {"n": 2, "win_rate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "mean_base": 0.1, "mean_tuned": 0.3,
                    "diversity_base": one_each, "diversity_tuned": one_each}}
    report = build_loop_report([rec], {"model": "m", "scorer": "redness", "fidelity": None})
    lines = summary(report).splitlines()
    assert lines[1].split() == ["1", "0.2500", "0.1250", "100.0%", "(100-100%)", "0.3000", "-"]
    assert lines[2] == "base: eval reward 0.1000, diversity -"
    assert "<svg" in render_loop_html(report)


def test_loop_config_checks_the_toy_caption_budget():
    with pytest.raises(ConfigError, match="132 distinct captions"):
        build_config(LoopConfig, {"toy_prompts": 100, "toy_eval_prompts": 64})


def test_loop_config_refuses_what_round_1s_train_would_refuse():
    with pytest.raises(ConfigError, match=r"DPO-scale beta.*round 1's aif train"):
        build_config(LoopConfig, {"loss": "mapo"})  # the loop's default beta (2000) is a DPO beta
    assert build_config(LoopConfig, {"loss": "mapo", "beta": 0.1}).beta == 0.1


# ---- evidence: online vs offline in the toy world -----------------------------------------------------------

@pytest.mark.slow
def test_online_rounds_beat_one_offline_round_at_the_same_image_budget(toy_sd15, tmp_path, capsys):
    """3 rounds of K = 4 images per caption and 80 steps (the defaults) vs one round of K = 12 and 240 steps: the
    same 384 generated images and 240 optimizer steps, the same 32 captions and the same held-out eval. Online
    trains on pairs of its own current samples; offline's pairs (from 12 candidates, so wider margins) are fixed."""
    from aifeedback.stages.loop import stage_values

    rounds, k, steps = 3, 4, 80
    online_cfg = build_config(LoopConfig, dict(out=str(tmp_path / "online"), rounds=rounds, images_per_prompt=k,
                                               train_steps=steps, progress=False))
    online = STAGES["loop"].run(online_cfg)
    offline = STAGES["loop"].run(build_config(LoopConfig, dict(
        out=str(tmp_path / "offline"), rounds=1, images_per_prompt=k * rounds, train_steps=steps * rounds,
        progress=False)))
    last, off = online["rounds"][-1], offline["rounds"][0]
    assert sum(r["samples"]["images"] for r in online["rounds"]) == off["samples"]["images"] == 32 * k * rounds
    assert last["eval"]["mean_base"] == off["eval"]["mean_base"]  # the same held-out twins of the same base
    sample_rewards = [r["samples"]["mean_reward"] for r in online["rounds"]]
    assert sample_rewards == sorted(sample_rewards)  # each round's policy draws redder samples than the last
    assert last["eval"]["mean_tuned"] > off["eval"]["mean_tuned"]
    # head to head on the same held-out captions and seeds: the online model against the offline one
    values = stage_values(online_cfg, rounds, "eval")
    values.update(base=str(stage_dir(tmp_path / "offline", 1, "export")), scorers=["redness", "toy-fidelity"],
                  out=str(tmp_path / "online-vs-offline"))
    head = STAGES["eval"].run(build_config(STAGES["eval"].config, values))["scorers"]["redness"]
    with capsys.disabled():
        print(f"\nonline rounds: {json.dumps(online['rounds'])}\noffline: {json.dumps(off)}\nbase: "
              f"{json.dumps(online['base'])}\nhead to head: {json.dumps(head)}")
    assert head["ci_low"] > 0.5  # the online model is redder than the offline one on most held-out twins
