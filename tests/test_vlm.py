"""VLM judges run locally: Qwen's image preparation, the model card's inputs, P(Yes) from the answer position, the
real architecture, and the preflight that refuses a model that is not a VLM."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from aifeedback.errors import AifError
from aifeedback.preflight import check_scorers
from aifeedback.scoring.scorers import UnknownScorerError, list_scorers, load_scorer
from aifeedback.scoring.scorers.vlm_judges import JUDGES, QwenImage, merge_logprobs, smart_resize

SIZES = [(17, 90), (300, 701), (801, 240), (1024, 1024), (227, 224), (28, 28), (5, 9), (64, 3000)]
MODES = ["RGB", "RGBA", "P", "L"]


def noise_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1}[mode]
    image = Image.frombytes(mode, (w, h), rng.integers(0, 256, h * w * channels, dtype=np.uint8).tobytes())
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return image


# ---------------------------------------------------------------------------------------------------------------
# qwen_vl_utils (QwenLM/Qwen2.5-VL, qwen-vl-utils/src/qwen_vl_utils/vision_process.py), written out independently
# of the project's code: smart_resize, to_rgb and fetch_image's resize of a PIL image.

def upstream_smart_resize(height, width, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28):
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def upstream_fetch_image(image):
    if image.mode == "RGBA":
        rgb = Image.new("RGB", image.size, (255, 255, 255))
        rgb.paste(image, mask=image.split()[3])
    else:
        rgb = image.convert("RGB")
    w, h = rgb.size
    nh, nw = upstream_smart_resize(h, w)
    return rgb.resize((nw, nh))


@pytest.mark.parametrize("h,w", [(17, 90), (1024, 1024), (5000, 4000), (20000, 300), (3, 500), (56, 56), (41, 43)])
def test_smart_resize_is_qwen_vl_utils(h, w):
    assert smart_resize(h, w) == upstream_smart_resize(h, w)
    nh, nw = smart_resize(h, w)
    assert nh % 28 == 0 and nw % 28 == 0 and 4 * 28 * 28 <= nh * nw <= 16384 * 28 * 28


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w,h", SIZES)
def test_image_preparation_is_qwen_vl_utils_fetch_image(w, h, mode):
    image = noise_image(w, h, mode=mode)
    ours, ref = QwenImage()(image), upstream_fetch_image(image)
    assert ours.mode == "RGB" and ours.size == ref.size
    assert np.array_equal(np.array(ours), np.array(ref))


def test_rgba_is_composited_on_white_not_stripped():
    image = Image.new("RGBA", (56, 56), (10, 20, 30, 0))  # fully transparent: white after fetch_image
    assert np.array(QwenImage()(image)).min() == 255


def test_data_url_carries_the_same_pixels():
    import base64
    import io

    image = noise_image(90, 40, mode="RGBA")
    url = QwenImage(data_url=True)(image)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(np.array(decoded), np.array(QwenImage()(image)))


# ---------------------------------------------------------------------------------------------------------------
# The score formula

def test_judge_score_renormalises_over_the_answers():
    yes_no = JUDGES["vlm"]
    lp = merge_logprobs([("Yes", math.log(0.5)), (" yes", math.log(0.1)), ("No", math.log(0.2)),
                         ("The", math.log(0.2))])
    assert yes_no.score(lp) == pytest.approx(0.6 / 0.8)
    assert yes_no.score(merge_logprobs([("No", -0.1)])) == 0.0  # Yes absent = p 0
    assert yes_no.score(merge_logprobs([("The", -0.1)])) is None  # no answer at all
    assert yes_no.score({"yes": -2000.0, "no": -2000.0 - math.log(3)}) == pytest.approx(0.75)  # no underflow
    ratings = JUDGES["unifiedreward"]
    lp = merge_logprobs([("5", math.log(0.3)), ("4", math.log(0.3)), ("1", math.log(0.2)), ("x", math.log(0.2))])
    assert ratings.score(lp) == pytest.approx((5 * 0.3 + 4 * 0.3 + 1 * 0.2) / 0.8)


def test_unifiedreward_preset_keeps_the_upstream_slots():
    q = JUDGES["unifiedreward"].ask("a red cube")
    assert "Text Caption: [a red cube]" in q and "Final Score:" in q and "1 to 5" in q
    assert JUDGES["unifiedreward"].model == "CodeGoat24/UnifiedReward-qwen-7b"
    assert JUDGES["vlm"].model == "Qwen/Qwen2.5-VL-7B-Instruct"


# ---------------------------------------------------------------------------------------------------------------
# The local judge on the tiny random Qwen2.5-VL

@pytest.fixture(scope="module")
def judge():
    return load_scorer("vlm:tiny")


IMAGES = [noise_image(64, 64, 1), noise_image(90, 40, 2, "RGBA"), noise_image(200, 300, 3, "P")]
PROMPTS = ["a cat", "a red dog under a tree", "x"]


def model_card_inputs(s, image, prompt):
    """Qwen2.5-VL's model card: apply_chat_template, process_vision_info, processor(text=[text], images=...)."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": JUDGES["vlm"].ask(prompt)}]}]
    text = s.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return s.processor(text=[text], images=[upstream_fetch_image(image)], padding=True, return_tensors="pt")


def test_inputs_are_the_model_cards(judge):
    ours = judge.inputs([judge.transform(IMAGES[1])], [PROMPTS[1]])
    ref = model_card_inputs(judge, IMAGES[1], PROMPTS[1])
    assert torch.equal(ours["input_ids"], ref["input_ids"]) and torch.equal(ours["pixel_values"], ref["pixel_values"])
    text = judge.processor.tokenizer.decode(ref["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|>")
    assert text.endswith('<|vision_end|>Does this image show "a red dog under a tree"? Answer Yes or No.<|im_end|>\n'
                         "<|im_start|>assistant\n")


def test_score_is_p_yes_of_the_first_generated_token(judge):
    """The model card's generate() on one image at a time; its first token's logits; P(Yes)/(P(Yes)+P(No)) over the
    one-token spellings of Yes and No, listed by hand. The judge scores the three images in one padded batch."""
    tok = judge.processor.tokenizer
    yes = tok.convert_tokens_to_ids(["Yes", "ĠYes", "yes", "Ġyes", "YES", "ĠYES"])
    no = tok.convert_tokens_to_ids(["No", "ĠNo", "no", "Ġno", "NO", "ĠNO"])
    expected = []
    for image, prompt in zip(IMAGES, PROMPTS):
        out = judge.model.generate(**model_card_inputs(judge, image, prompt), max_new_tokens=1, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True)
        p = torch.softmax(out.logits[0][0].float(), -1)
        expected.append((p[yes].sum() / (p[yes].sum() + p[no].sum())).item())
    assert judge.score(IMAGES, PROMPTS, batch_size=3) == pytest.approx(expected, abs=2e-6)
    assert judge.score(IMAGES, PROMPTS, batch_size=1) == pytest.approx(expected, abs=2e-6)


def test_answer_tokens_move_the_score(judge):
    """Raising the Yes tokens' output rows raises the score to ~1; the No rows, to ~0 (the right ids are read)."""
    head = judge.model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            for word, target in (("yes", 1.0), ("no", 0.0)):
                head.copy_(saved)
                hidden = judge.model.model.language_model.norm.weight.detach()
                head[judge.ids[word]] = 50.0 * hidden / hidden.norm()
                scores = judge.score(IMAGES, PROMPTS)
                assert scores == pytest.approx([target] * 3, abs=0.05), word
    finally:
        with torch.no_grad():
            head.copy_(saved)


def test_unifiedreward_tiny_is_an_expected_rating():
    s = load_scorer("unifiedreward:tiny")
    assert sorted(s.ids) == ["1", "2", "3", "4", "5"]
    scores = s.score(IMAGES[:2], PROMPTS[:2])
    assert all(1.0 <= x <= 5.0 for x in scores)


def test_real_architecture_is_qwen25_vl_7b():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from aifeedback.scoring.scorers.vlm import REAL_CONFIG

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**REAL_CONFIG))
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(8.29e9, rel=2e-3)  # Qwen/Qwen2.5-VL-7B-Instruct: 8.29B parameters
    assert len(model.model.visual.blocks) == 32 and len(model.model.language_model.layers) == 28


# ---------------------------------------------------------------------------------------------------------------
# Registry and preflight

def test_registry_lists_the_judges():
    names = list_scorers()
    assert {"vlm", "vlm-quality", "unifiedreward"} <= set(names)
    assert "Qwen2.5-VL" in names["vlm"] and "http" in names["vlm"]
    with pytest.raises(UnknownScorerError, match="Did you mean 'vlm'"):
        check_scorers(["vlmm:tiny"])


def test_a_model_that_is_not_a_vlm_fails_in_preflight(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(AifError, match=r"(?s)'clip' model, not a vision-language model.*Fix: give a Qwen2.5-VL"):
        check_scorers([f"vlm:{tmp_path}"])
    with pytest.raises(AifError, match="not a vision-language model"):
        load_scorer(f"vlm:{tmp_path}")  # the API checks too, before loading weights
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    check_scorers([f"vlm:{tmp_path}"])
    check_scorers(["vlm:tiny", "unifiedreward:tiny"])


@pytest.mark.slow
def test_bench_vlm_runs(aif_cache):
    """bench/vlm.py's CPU mode (the pipeline bench/gpu.sh times at real size) still runs and reports a speed."""
    import json
    import os
    import sys
    from pathlib import Path

    from tests.launch import run_group

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    args = ["--tiny", "--images", "8", "--batch-size", "4", "--workers", "0", "--image-size", "64"]
    r = run_group([sys.executable, str(root / "bench" / "vlm.py"), *args], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["images_per_s"] > 0
