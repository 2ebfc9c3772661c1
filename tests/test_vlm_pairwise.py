"""Pairwise VLM judges (vlm-pairwise, unifiedreward-pairwise): two images of one prompt in one question, P(first) from
the answer token's log-probabilities of "1"/"2", both orders averaged (vlm_judges.PairJudging.compare); locally on the
tiny random Qwen2.5-VL and served by the 127.0.0.1 server of test_vlm_served; and `aif eval`'s win rates with it."""

import pytest
import torch
from PIL import Image

from aifeedback.scoring.scorers import is_pairwise, load_scorer
from aifeedback.scoring.scorers.vlm_judges import JUDGES, PairwiseOnlyError, order_averaged
from tests.test_vlm import noise_image, upstream_fetch_image
from tests.test_vlm_served import fake_server


@pytest.fixture
def server():
    with fake_server() as served:
        yield served


@pytest.fixture(scope="module")
def judge():
    return load_scorer("vlm-pairwise:tiny")


A, B, C = noise_image(64, 64, 1), noise_image(90, 40, 2, "RGBA"), noise_image(120, 80, 3)


def first_probability(judge, first, second, prompt):
    """The model card's generate() on [image 1, image 2, question]: P("1") / (P("1") + P("2")) of its first token,
    over the one-token spellings of 1 and 2 listed by hand."""
    messages = [{"role": "user", "content": [{"type": "image", "image": first}, {"type": "image", "image": second},
                                             {"type": "text", "text": JUDGES["vlm-pairwise"].ask(prompt)}]}]
    text = judge.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = judge.processor(text=[text], images=[upstream_fetch_image(first), upstream_fetch_image(second)],
                             padding=True, return_tensors="pt")
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    out = judge.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    p = torch.softmax(out.logits[0][0].float(), -1)
    one, two = (judge.processor.tokenizer.convert_tokens_to_ids([d]) for d in ("1", "2"))
    return (p[one].sum() / (p[one].sum() + p[two].sum())).item()


@pytest.mark.numerics
def test_local_pairwise_is_both_orders_of_the_model_cards_answer_averaged(judge):
    expected = [order_averaged(first_probability(judge, A, B, "a cat"), first_probability(judge, B, A, "a cat")),
                order_averaged(first_probability(judge, C, A, "x"), first_probability(judge, A, C, "x"))]
    assert judge.compare([A, C], [B, A], ["a cat", "x"]) == pytest.approx(expected, abs=2e-6)
    assert judge.ids == {"1": [judge.processor.tokenizer.convert_tokens_to_ids("1")],
                         "2": [judge.processor.tokenizer.convert_tokens_to_ids("2")]}


def test_swapping_the_images_gives_one_minus_p(judge):
    p = judge.compare([A, B, C], [B, A, A], ["a cat", "a cat", "y"], batch_size=3)
    assert p[1] == pytest.approx(1 - p[0], abs=1e-6) and 0 < p[0] < 1
    assert order_averaged(0.9, 0.3) + order_averaged(0.3, 0.9) == pytest.approx(1.0, abs=1e-15)
    assert order_averaged(0.7, 0.7) == 0.5  # a judge that always says "first" with 0.7 has no preference


def test_a_pairwise_judge_gives_no_score_to_one_image(judge):
    assert is_pairwise("unifiedreward-pairwise") and not is_pairwise("vlm")
    with pytest.raises(PairwiseOnlyError, match="compares two images of a prompt.*Fix"):
        judge.score([A], ["a cat"])
    with pytest.raises(ValueError, match="needs a pairwise judge"):
        load_scorer("vlm:tiny").compare([A], [B], ["a cat"])


def test_unifiedreward_pairwise_preset_keeps_the_upstream_slots():
    j = JUDGES["unifiedreward-pairwise"]
    text = j.ask("a red cube")
    assert j.pairwise and j.words() == ("1", "2") and j.model == "CodeGoat24/UnifiedReward-qwen-7b"
    assert "Alignment with the Caption" in text and "Overall Image Quality" in text
    assert text.endswith("Text Caption: [a red cube]")


def flat(red):
    return Image.new("RGB", (56, 56), (red, 30, 30))


def test_served_pairwise_cancels_the_position_bias(server):
    """The fake judge favours the first position by 0.1 and the redder image by 0.3 x the red difference: the
    averaged P(a better) is 0.5 + 0.3 (red a - red b), swapping gives 1 - p, each request holds both images."""
    url, fake = server
    fake.by_red = True
    s = load_scorer(f"unifiedreward-pairwise:{url}/v1")
    ra, rb = 204 / 255, 51 / 255
    p = s.compare([flat(204), flat(51)], [flat(51), flat(204)], ["p", "p"])
    assert p == pytest.approx([0.5 + 0.3 * (ra - rb), 0.5 - 0.3 * (ra - rb)], abs=1e-9)
    assert p[0] + p[1] == pytest.approx(1.0, abs=1e-12)
    assert len(fake.bodies) == 4
    for body in fake.bodies:
        content = body["messages"][0]["content"]
        assert [c["type"] for c in content] == ["image_url", "image_url", "text"]
        assert content[2]["text"] == JUDGES["unifiedreward-pairwise"].ask("p")


def test_eval_win_rates_with_a_pairwise_judge(server):
    """`aif eval`'s scoring of (base, tuned) twins: the pairwise judge's (1 - p, p) with p = P(tuned better), in its
    place among pointwise scorers."""
    from aifeedback.config import build_config
    from aifeedback.scoring.loop import given
    from aifeedback.stages.evaluate import score_pairs
    from aifeedback.stages.evaluate_config import EvalConfig

    url, fake = server
    fake.by_red = True
    cfg = build_config(EvalConfig, {"base": "b", "tuned": "t", "device": "cpu", "progress": False,
                                    "scorers": ["redness", f"vlm-pairwise:{url}/v1", "brightness"],
                                    "scorer_batch_size": 2})
    reds = [(200, 50), (40, 220), (120, 120)]
    pairs = [(k, (flat(a), flat(b)), "p") for k, (a, b) in enumerate(reds)]
    scored = score_pairs(cfg, iter(pairs), given, ("base", "tuned"), "scoring")
    assert sorted(scored) == [0, 1, 2]
    for k, (a, b) in enumerate(reds):
        redness, judged, brightness = scored[k]
        p = 0.5 + 0.3 * (b - a) / 255
        assert judged == pytest.approx((1 - p, p), abs=1e-9)
        assert (redness[1] > redness[0]) == (b > a) and (brightness[0] == brightness[1]) == (a == b)


def red(data: bytes) -> float:
    import io

    import numpy as np

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)[..., 0].mean() / 255


def test_aif_score_labels_each_pair_with_the_judges_own_verdict(server, tmp_path):
    """`aif score --scorer vlm-pairwise --reward-url URL` on 2 prompts x 3 images: every two images of a prompt are
    judged (both orders), the best-worst pair is picked by mean win probability, and its label and score_0 are the
    judge's direct P(jpg_0 better) on those two, not two separate scores compared."""
    from aifeedback.stages.score import run
    from tests.test_score import cfg, image_scores, make_generate_dir, read_pairs

    url, fake = server
    fake.by_red = True
    rows = make_generate_dir(tmp_path / "gen", n_prompts=2, k=3)
    run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer=["vlm-pairwise"],
            reward_url=f"{url}/v1"))
    assert len(fake.bodies) == 1 + 2 * 3 * 2  # preflight, then 3 pairs per prompt in both orders
    pairs = read_pairs(tmp_path / "pairs")
    assert len(pairs) == 2
    for p in pairs:
        direct = 0.5 + 0.3 * (red(p["jpg_0"]) - red(p["jpg_1"]))
        assert p["score_0"] == pytest.approx(direct, abs=3e-3) and p["score_1"] == pytest.approx(1 - p["score_0"])
        assert p["label_0"] == float(p["score_0"] > 0.5) and p["margin"] == pytest.approx(abs(2 * p["score_0"] - 1))
    reds = [red(r["image"]) for r in rows]
    for r in image_scores(tmp_path / "pairs"):
        others = [0.5 + 0.3 * (reds[r["row"]] - reds[o]) for o in range(3 * (r["row"] // 3), 3 * (r["row"] // 3) + 3)
                  if o != r["row"]]
        assert r["raw"][0] == pytest.approx(sum(others) / 2, abs=3e-3) and r["wins"][r["slot"]] is None


def test_aif_score_with_the_local_pairwise_judge_is_compare(judge, tmp_path):
    """K = 2 on the tiny local judge: the one pair's score_0 is compare(jpg_0, jpg_1)."""
    import io

    from aifeedback.stages.score import run
    from tests.test_score import cfg, make_generate_dir, read_pairs

    make_generate_dir(tmp_path / "gen", n_prompts=2, k=2)
    run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer=["vlm-pairwise:tiny"], keep_ties=True))
    pairs = read_pairs(tmp_path / "pairs")
    assert len(pairs) == 2
    firsts = [Image.open(io.BytesIO(p["jpg_0"])) for p in pairs]
    seconds = [Image.open(io.BytesIO(p["jpg_1"])) for p in pairs]
    expected = judge.compare(firsts, seconds, [p["caption"] for p in pairs])
    assert [p["score_0"] for p in pairs] == pytest.approx(expected, abs=2e-6)


def test_a_pairwise_judge_joins_no_ensemble():
    from aifeedback.config import ConfigError
    from tests.test_score import cfg

    with pytest.raises(ConfigError, match="vlm-pairwise:tiny judges pairs itself"):
        cfg(input="in", out="out", scorer=["vlm-pairwise:tiny", "redness"])


@pytest.mark.slow
def test_bench_vlm_pairwise_runs(aif_cache):
    """bench/vlm.py --judge vlm-pairwise (aif score's pairwise phase) runs on the tiny judge and reports a speed."""
    import json
    import os
    import sys
    from pathlib import Path

    from tests.launch import run_group

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    args = ["--tiny", "--judge", "vlm-pairwise", "--images", "8", "--batch-size", "4", "--image-size", "64"]
    r = run_group([sys.executable, str(root / "bench" / "vlm.py"), *args], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["images_per_s"] > 0 and result["pairs_per_s"] == pytest.approx(result["images_per_s"] / 2, rel=0.01)
