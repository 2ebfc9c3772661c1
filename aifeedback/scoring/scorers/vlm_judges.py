"""VLM judges: the question each judge asks about an image, the answers it reads, and the score those give.

A judge asks one question per image (a template per task), or per pair of images (a pairwise judge), and reads the
log-probabilities of the FIRST answer token (one forward pass locally, `max_tokens: 1` from a server). Its answers
are words with values; the score is the expected value over them, renormalised over the answers alone:

    score = sum_a value(a) * p(a) / sum_a p(a)        p(a) = the summed probability of a's token spellings

so a Yes/No judge (Yes = 1, No = 0) scores P("Yes") / (P("Yes") + P("No")) in [0, 1] (renormalised over Yes/No:
probability put on other tokens, such as "The", neither raises nor lowers it), and the UnifiedReward preset, whose
answers are the ratings 1..5, scores the expected rating in [1, 5]. A token counts as an answer when, stripped of
spaces and lowercased, it is the answer word ("Yes", " yes" and "YES" are all Yes).

A pairwise judge sees two images of one prompt (first, second) and answers "1" or "2" (the better one): its answers
are 1 -> 1.0 and 2 -> 0.0, so the formula gives P(first) = P("1") / (P("1") + P("2")). VLMs favour one position,
so `PairJudging.compare` asks both orders and averages them:

    p(a, b) = (P(first | a, b) + 1 - P(first | b, a)) / 2

which cancels a constant position bias and makes swapping the images give exactly 1 - p.

Light (no torch): the registry and the command line's preflight read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aifeedback.errors import AifError

QWEN25_VL_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
UNIFIEDREWARD_7B = "CodeGoat24/UnifiedReward-qwen-7b"

# config.json model_type of the checkpoints the local judge runs (scorers/vlm.py); preflight.check_vlm refuses others
VLM_TYPES = ("qwen2_5_vl",)

YES_NO = (("yes", 1.0), ("no", 0.0))
FIRST_SECOND = (("1", 1.0), ("2", 0.0))
RATINGS_1_5 = tuple((str(k), float(k)) for k in range(1, 6))


@dataclass(frozen=True)
class Judge:
    """One judge: `question.format(prompt=...)` is the text after the image; `answers` (word, value) pairs."""

    name: str
    question: str
    answers: tuple[tuple[str, float], ...]
    model: str  # the local model loaded when the spec names none
    uses_prompt: bool = True
    images: int = 1  # 2: a pairwise judge, shown (first, second) and asked which is better

    @property
    def pairwise(self) -> bool:
        return self.images == 2

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

# The UnifiedReward pairwise preset: the pair-ranking image-generation question of CodeGoat24/UnifiedReward
# (inference_qwen/image_generation/qwen_pair_rank_image_generation.py, for UnifiedReward-qwen-7b: the two images, then
# the text), paraphrased: the same two criteria and the same "Text Caption: [...]" slot. Upstream the model writes a
# sentence naming the better image (or a tie), parsed from the text; here it is asked for the better image's number
# alone and P(first) is read from the probabilities of its first token "1"/"2" (a tie is p near 0.5).
_UNIFIEDREWARD_PAIR = (
    "You are given a text caption and two images generated from it (Image 1 first, then Image 2). Compare them on "
    "two criteria:\n"
    "1. Alignment with the Caption: are the objects, their attributes and their relations as the caption says?\n"
    "2. Overall Image Quality: clarity, detail, colour and aesthetic appeal.\n"
    "Which image is better on both? Answer with its number only: 1 or 2.\n"
    "Text Caption: [{prompt}]"
)

JUDGES: dict[str, Judge] = {j.name: j for j in (
    Judge("vlm", 'Does this image show "{prompt}"? Answer Yes or No.', YES_NO, QWEN25_VL_7B),
    Judge("vlm-quality", "Is this a high-quality image: sharp, well composed, without artefacts or distorted "
                         "shapes? Answer Yes or No.", YES_NO, QWEN25_VL_7B, uses_prompt=False),
    Judge("unifiedreward", _UNIFIEDREWARD, RATINGS_1_5, UNIFIEDREWARD_7B),
    Judge("vlm-pairwise", 'Image 1 and Image 2 were both made for "{prompt}". Which one shows it better, as a better '
                          'image? Answer 1 or 2.', FIRST_SECOND, QWEN25_VL_7B, images=2),
    Judge("unifiedreward-pairwise", _UNIFIEDREWARD_PAIR, FIRST_SECOND, UNIFIEDREWARD_7B, images=2),
)}


def order_averaged(p_ab: float, p_ba: float) -> float:
    """P(a better than b) from P(first) asked as (a, b) and as (b, a): the mean of the two orders (module docstring)."""
    return 0.5 * (p_ab + (1.0 - p_ba))


class PairJudging:
    """What the judge scorers (local and served; put before Scorer in their bases) add: `compare` for a pairwise judge,
    whose `score_items` takes (first, second) item pairs, and `score` refused to it. Light: no torch."""

    def compare(self, first: list, second: list, prompts: list[str], batch_size: int = 16) -> list[float]:
        """P(first[i] better than second[i]) per pair, both orders asked in one batch and averaged."""
        if not self.judge.pairwise:
            raise ValueError(f"scorer '{self.name}' judges one image at a time; compare() needs a pairwise judge")
        if not (len(first) == len(second) == len(prompts)):
            raise ValueError(f"compare() got {len(first)} and {len(second)} images for {len(prompts)} prompts; pass "
                             "one pair of images per prompt")
        out: list[float] = []
        for i in range(0, len(first), batch_size):
            a = [self.transform(im) for im in first[i : i + batch_size]]
            b = [self.transform(im) for im in second[i : i + batch_size]]
            p = list(prompts[i : i + batch_size])
            both = self.score_items(list(zip(a, b)) + list(zip(b, a)), p + p)
            out.extend(order_averaged(x, y) for x, y in zip(both[: len(a)], both[len(a) :]))
        return out

    def score(self, images, prompts, batch_size: int = 32):
        if not self.judge.pairwise:
            return super().score(images, prompts, batch_size)
        raise PairwiseOnlyError(f"scorer '{self.name}' compares two images of a prompt; it gives no score to one "
                                "image. Fix: use it where pairs are judged (aif score labels pairs with it, aif eval's "
                                "win rates), or use a pointwise judge (vlm, unifiedreward) as a reward.")

class PairwiseOnlyError(AifError):
    """A pairwise judge used where one image needs a score."""


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
