"""VLM judges: the question each judge asks about an image, the answers it reads, and the score those give.

A judge asks one question per image (a template per task) and reads the log-probabilities of the FIRST answer token
(one forward pass locally, `max_tokens: 1` from a server). Its answers are words with values; the score is the
expected value over them, renormalised over the answers alone:

    score = sum_a value(a) * p(a) / sum_a p(a)        p(a) = the summed probability of a's token spellings

so a Yes/No judge (Yes = 1, No = 0) scores P("Yes") / (P("Yes") + P("No")) in [0, 1] (renormalised over Yes/No:
probability put on other tokens, such as "The", neither raises nor lowers it), and the UnifiedReward preset, whose
answers are the ratings 1..5, scores the expected rating in [1, 5]. A token counts as an answer when, stripped of
spaces and lowercased, it is the answer word ("Yes", " yes" and "YES" are all Yes).

Light (no torch): the registry and the command line's preflight read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

QWEN25_VL_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
UNIFIEDREWARD_7B = "CodeGoat24/UnifiedReward-qwen-7b"

# config.json model_type of the checkpoints the local judge runs (scorers/vlm.py); preflight.check_vlm refuses others
VLM_TYPES = ("qwen2_5_vl",)

YES_NO = (("yes", 1.0), ("no", 0.0))
RATINGS_1_5 = tuple((str(k), float(k)) for k in range(1, 6))


@dataclass(frozen=True)
class Judge:
    """One judge: `question.format(prompt=...)` is the text after the image; `answers` (word, value) pairs."""

    name: str
    question: str
    answers: tuple[tuple[str, float], ...]
    model: str  # the local model loaded when the spec names none
    uses_prompt: bool = True

    def ask(self, prompt: str) -> str:
        return self.question.format(prompt=prompt)

    def words(self) -> tuple[str, ...]:
        return tuple(word for word, _ in self.answers)

    def score(self, logprobs: dict[str, float]) -> float | None:
        """The score from answer word -> log-probability (summed over its spellings; absent words have p = 0);
        None when no answer word has any probability."""
        found = {w: lp for w, lp in logprobs.items() if w in self.words() and lp > -math.inf}
        if not found:
            return None
        top = max(found.values())  # renormalised in log space: no underflow however unlikely the answers are
        ps = {w: math.exp(lp - top) for w, lp in found.items()}
        return sum(value * ps.get(word, 0.0) for word, value in self.answers) / sum(ps.values())


def answer_word(token: str) -> str:
    """How a token is matched to an answer: stripped of spaces and lowercased."""
    return token.strip().lower()


def merge_logprobs(pairs) -> dict[str, float]:
    """(token, logprob) pairs -> answer word -> log of the summed probability of its spellings."""
    out: dict[str, float] = {}
    for token, lp in pairs:
        word = answer_word(token)
        out[word] = lp if word not in out else _logaddexp(out[word], lp)
    return out


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


# The UnifiedReward preset: the pointwise image-generation question of CodeGoat24/UnifiedReward
# (inference_qwen/image_generation/qwen_point_score_image_generation.py, for UnifiedReward-qwen-7b), paraphrased: the
# same two criteria (alignment with the caption; overall quality), the same 1-5 scale after "Final Score:" and the same
# "Text Caption: [...]" slot. Upstream the model first lists the caption's elements and then writes the score, which
# is parsed from the text; here it is asked for the score alone and the score is the expected rating over the
# probabilities of its first token "1".."5" (README, "VLM judges").
_UNIFIEDREWARD = (
    "You are given a text caption and an image generated from it. Judge the image on two criteria:\n"
    "1. Alignment with the Caption: are the objects, their attributes and their relations as the caption says?\n"
    "2. Overall Image Quality: clarity, detail, colour and aesthetic appeal.\n"
    "Give one score from 1 to 5 after 'Final Score:'. Answer with that single digit only.\n"
    "Text Caption: [{prompt}]\n"
    "Final Score:"
)

JUDGES: dict[str, Judge] = {j.name: j for j in (
    Judge("vlm", 'Does this image show "{prompt}"? Answer Yes or No.', YES_NO, QWEN25_VL_7B),
    Judge("vlm-quality", "Is this a high-quality image: sharp, well composed, without artefacts or distorted "
                         "shapes? Answer Yes or No.", YES_NO, QWEN25_VL_7B, uses_prompt=False),
    Judge("unifiedreward", _UNIFIEDREWARD, RATINGS_1_5, UNIFIEDREWARD_7B),
)}


# ---------------------------------------------------------------------------------------------------------------
# Images as Qwen's model card prepares them: qwen_vl_utils.process_vision_info -> fetch_image on a PIL image
# (QwenLM/Qwen2.5-VL, qwen-vl-utils/src/qwen_vl_utils/vision_process.py), before the processor.

IMAGE_FACTOR = 28  # patch 14 x spatial merge 2
MIN_PIXELS, MAX_PIXELS, MAX_RATIO = 4 * 28 * 28, 16384 * 28 * 28, 200


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """qwen_vl_utils' smart_resize: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got "
                         f"{max(height, width) / min(height, width)}")
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


@dataclass(frozen=True)
class QwenImage:
    """image -> qwen_vl_utils' fetch_image(image): RGBA composited onto white (other modes: PIL's RGB conversion),
    then a PIL resize (its default filter, bicubic) to smart_resize's size. `data_url`: that image as a PNG data URL
    (lossless, so a server's processor sees the very pixels the local scorer does). `alpha="drop"`: PIL's RGB
    conversion for every mode (alpha dropped, not composited), as the older fetch_image HPSv3 ships does."""

    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    data_url: bool = False
    alpha: str = "white"

    def __call__(self, image):
        from PIL import Image

        if image.mode == "RGBA" and self.alpha == "white":
            rgb = Image.new("RGB", image.size, (255, 255, 255))
            rgb.paste(image, mask=image.split()[3])
        else:
            rgb = image.convert("RGB")
        w, h = rgb.size
        nh, nw = smart_resize(h, w, IMAGE_FACTOR, self.min_pixels, self.max_pixels)
        rgb = rgb.resize((nw, nh))
        return png_data_url(rgb) if self.data_url else rgb


def png_data_url(image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
