"""`--reward-url` (stages/reward_options.py) on every stage that takes scorers, against the real 127.0.0.1 server of
test_vlm_served: the same judge as the `NAME:URL` spelling, the key from an environment variable and never written
down, scorers that cannot be served refused by name, and a server that is down, answers without log-probabilities or
serves a model that takes no images refused in preflight."""

import sys

import numpy as np
import pytest

from aifeedback.config import ConfigError, build_config
from aifeedback.preflight import check_scorers
from aifeedback.scoring.scorers.vlm_served import ServerError
from aifeedback.stages import STAGES
from tests.test_vlm_served import fake_server, free_port

STAGE_SCORERS = {"score": ("scorer", ["vlm"]), "eval": ("scorers", ["vlm"]), "loop": ("scorer", "vlm"),
                 "rl": ("reward", "vlm")}


@pytest.fixture
def server():
    with fake_server() as served:
        yield served


def config(stage, **kw):
    base = {"score": {"input": "in", "out": "out"}, "eval": {"base": "tiny-sd15", "tuned": "t"}}.get(stage, {})
    return build_config(STAGES[stage].config, {**base, **kw})


@pytest.mark.parametrize("stage", sorted(STAGE_SCORERS))
def test_every_stage_serves_its_scorers_with_the_settings_in_the_url(stage, monkeypatch):
    field, value = STAGE_SCORERS[stage]
    monkeypatch.setenv("JUDGE_KEY", "s3cret")
    cfg = config(stage, **{field: value}, reward_url="http://gpu:8000/v1?model=m", reward_api_key_env="JUDGE_KEY",
                 reward_concurrency=16, reward_timeout=120)
    served = cfg.served(["vlm", "unifiedreward-pairwise"], "--x")
    assert served == ["vlm:http://gpu:8000/v1?model=m&api_key_env=JUDGE_KEY&concurrency=16&timeout=120",
                      "unifiedreward-pairwise:http://gpu:8000/v1?model=m&api_key_env=JUDGE_KEY&concurrency=16"
                      "&timeout=120"]
    assert "s3cret" not in repr(cfg)
    assert config(stage, **{field: value}).served(["vlm"], "--x") == ["vlm"]  # no --reward-url: as given


@pytest.mark.parametrize("stage", sorted(STAGE_SCORERS))
def test_a_scorer_that_cannot_be_served_is_refused_by_name(stage):
    field, value = STAGE_SCORERS[stage]
    value = ["vlm", "pickscore"] if isinstance(value, list) else ("pickscore" if stage == "loop" else "vlm,pickscore")
    with pytest.raises(ConfigError, match=r"pickscore: this scorer cannot be served.*Fix: use a VLM judge \(vlm, "):
        config(stage, **{field: value}, reward_url="http://127.0.0.1:1/v1")


def test_reward_url_conflicts_and_lonely_settings_are_problems():
    with pytest.raises(ConfigError, match=r"vlm:tiny names its own model \(tiny\) and --reward-url a server"):
        config("score", scorer=["vlm:tiny"], reward_url="http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="--reward-timeout set without --reward-url"):
        config("score", scorer=["vlm"], reward_timeout=5)
    with pytest.raises(ConfigError, match="not an http"):
        config("score", scorer=["vlm"], reward_url="127.0.0.1:8000")


def test_rl_refuses_a_pairwise_judge_as_its_reward():
    with pytest.raises(ConfigError, match="vlm-pairwise:tiny: a pairwise judge compares two images"):
        config("rl", reward="vlm-pairwise:tiny")


def test_aif_score_with_reward_url_equals_the_url_spelling(server, tmp_path):
    """`aif score --scorer vlm --reward-url URL` asks the server (preflight's test image, then every image) and
    gives the scores the `vlm:URL` spelling gives; the output names the scorer `vlm`."""
    from aifeedback.stages.score import run
    from tests.test_score import cfg, image_scores, make_generate_dir

    url, fake = server
    fake.by_red = True
    make_generate_dir(tmp_path / "gen", n_prompts=2, k=3)
    fake.delay = 0.05  # requests overlap, so the limit shows
    run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "a"), scorer=["vlm"], reward_url=f"{url}/v1",
            reward_concurrency=2, batch_size=4))
    assert len(fake.bodies) == 1 + 6 and fake.max_in_flight == 2
    run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "b"), scorer=[f"vlm:{url}/v1"], batch_size=4))
    a, b = image_scores(tmp_path / "a"), image_scores(tmp_path / "b")
    assert [r["raw"] for r in a] == [r["raw"] for r in b] and len(a) == 6
    assert np.ptp([r["raw"][0] for r in a]) > 0.05  # the images' own scores, not one constant


def test_the_api_key_comes_from_the_environment_and_is_never_written(server, tmp_path, monkeypatch):
    from aifeedback.stages.score import run
    from tests.test_score import cfg, make_generate_dir

    url, fake = server
    fake.key = "s3cret-key"
    make_generate_dir(tmp_path / "gen", n_prompts=1, k=2)
    settings = dict(input=str(tmp_path / "gen"), scorer=["vlm"], reward_url=f"{url}/v1", reward_api_key_env="JK")
    with pytest.raises(ServerError, match="environment variable JK .* is not set.*Fix: export JK="):
        run(cfg(out=str(tmp_path / "a"), **settings))
    monkeypatch.setenv("JK", "wrong")
    with pytest.raises(ServerError, match=r"refused the API key \(HTTP 401\).*--reward-api-key-env"):
        run(cfg(out=str(tmp_path / "a"), **settings))
    monkeypatch.setenv("JK", "s3cret-key")
    run(cfg(out=str(tmp_path / "a"), **settings))
    assert fake.auth[-1] == "Bearer s3cret-key" and len(fake.bodies) == 1 + 2
    written = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert written and not any(b"s3cret-key" in p.read_bytes() for p in written)
    assert any(b"JK" in p.read_bytes() for p in written if p.name == "config.yaml")


@pytest.mark.parametrize("action, message", [
    ("400", r"refused the request \(HTTP 400.*must accept images: a text-only model is refused"),
    ("nologprobs", r"answered without log-probabilities.*--max-logprobs"),
])
def test_a_server_that_cannot_judge_fails_in_preflight(server, action, message):
    """A served model that takes no images (vLLM answers 400) or a server without log-probabilities: the preflight
    test question fails, naming the fix, before any model loads or image is made."""
    url, fake = server
    fake.script = [action]
    with pytest.raises(ServerError, match=message):
        check_scorers(config("score", scorer=["vlm-pairwise"], reward_url=f"{url}/v1").served(["vlm-pairwise"], "x"))
    assert len(fake.bodies) == 1 and len(fake.bodies[0]["messages"][0]["content"]) == 3  # two images, the question


@pytest.mark.parametrize("stage", [["score", "--input", "org/data", "--out", "OUT", "--scorer", "vlm"],
                                   ["eval", "--base", "tiny-sd15", "--tuned", "tiny-sd15", "--scorers", "vlm",
                                    "--out", "OUT"],
                                   ["loop", "--scorer", "vlm", "--out", "OUT"],
                                   ["rl", "--reward", "vlm", "--model", "tiny-sd15", "--out", "OUT"]])
def test_the_cli_refuses_an_unreachable_reward_url_before_any_heavy_import(tmp_path, stage):
    from tests.launch import run_group
    from tests.test_cli import _RUN_AND_REPORT_IMPORTS

    args = [a.replace("OUT", str(tmp_path / "out")) for a in stage]
    args += ["--reward-url", f"http://127.0.0.1:{free_port()}/v1"]
    result = run_group([sys.executable, "-c", _RUN_AND_REPORT_IMPORTS, *args], timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "could not be reached" in result.stderr and "Fix: start it" in result.stderr, result.stderr
    assert "heavy imports: none" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_aif_rl_rewards_come_from_the_server(server, tmp_path):
    """`aif rl --reward vlm --reward-url URL` on tiny-sd3: each rollout image's reward is the served judge's score
    of that image (the fake's P(Yes) from its red), logged under the reward's own name."""
    import io
    import json

    from datasets import load_dataset
    from PIL import Image

    from aifeedback.stages.rl_config import RLConfig
    from tests.test_rl_stage import TINY

    url, fake = server
    fake.by_red = True
    (tmp_path / "p.txt").write_text("a red apple\na blue car\n")
    cfg = build_config(RLConfig, dict(TINY, prompts=str(tmp_path / "p.txt"), out=str(tmp_path / "rl"), epochs=1,
                                      reward="vlm", reward_url=f"{url}/v1"))
    STAGES["rl"].run(cfg)
    rows = load_dataset("parquet", data_dir=str(tmp_path / "rl" / "rollouts" / "data"), split="train")
    red = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float64)[..., 0].mean() / 255 for b in rows["image"]]
    assert rows["reward_vlm"] == pytest.approx([0.01 + 0.98 * r for r in red], abs=3e-3)
    assert len(fake.bodies) >= 1 + 4  # preflight's test image(s), then the 4 rollout images
    metrics = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert "reward/vlm" in metrics[0]


def test_aif_loop_gives_its_rounds_the_served_judge(tmp_path):
    from aifeedback.stages.loop import stage_values

    cfg = config("loop", scorer="vlm", reward_url="http://gpu:8000/v1", reward_timeout=30, out=str(tmp_path / "o"))
    served = "vlm:http://gpu:8000/v1?timeout=30"
    assert stage_values(cfg, 1, "score")["scorer"] == [served]
    assert stage_values(cfg, 1, "eval")["scorers"] == [served, "toy-fidelity"]  # --fidelity stays local
