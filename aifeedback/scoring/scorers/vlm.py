"""A VLM judge run locally with transformers: Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration` + its processor).

Preprocessing is Qwen's model card's: the message [image, question] through `processor.apply_chat_template(...,
add_generation_prompt=True)`, the image through qwen_vl_utils' `fetch_image` (`vlm_judges.QwenImage`: RGB, resize to
smart_resize's multiple-of-28 size), then `processor(text=..., images=..., padding=True)`. One forward pass per batch
(left padding, so every row's last position is its answer position); the score is the judge's formula
(`vlm_judges.Judge.score`) over the log-softmax of that position's logits, each answer word summing its one-token
spellings. Spec: `JUDGE` (the judge's default model), `JUDGE:tiny` (a tiny random Qwen2.5-VL built offline),
`JUDGE:HUB_ID` or `JUDGE:PATH`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from aifeedback.errors import AifError
from aifeedback.families.loading import torch_dtype
from aifeedback.scoring.scorers import model_error
from aifeedback.scoring.scorers.base import Scorer
from aifeedback.scoring.scorers.vlm_check import check_vlm
from aifeedback.scoring.scorers.vlm_judges import JUDGES, PairJudging, QwenImage, answer_word
from aifeedback.zoo.cache import cached_build

# Qwen/Qwen2.5-VL-7B-Instruct's config.json (the architecture; written down for the architecture test and the GPU
# bench, which build it with random weights).
REAL_CONFIG = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                     rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1000000.0,
                                                             mrope_section=[16, 24, 24]),
                     bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    tie_word_embeddings=False,
)

# Qwen2.5-VL-Instruct's chat template (the processor's chat_template of the Qwen/Qwen2.5-VL-*-Instruct checkpoints).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# The image processor settings of Qwen2.5-VL-7B-Instruct's preprocessor_config.json.
IMAGE_PROCESSOR = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                       image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])


def tiny_config(tokenizer) -> Qwen2_5_VLConfig:
    """The real classes and vision geometry (patch 14, merge 2, windows of 112 px, windowed and full-attention
    blocks), tiny widths; token ids from the offline tokenizer."""
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    text = dict(REAL_CONFIG["text_config"], vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3]),
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(REAL_CONFIG["vision_config"], depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                  out_hidden_size=32, fullatt_block_indexes=[1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_tiny(out: Path) -> None:
    """A tiny random Qwen2_5_VLForConditionalGeneration with a processor (offline tokenizer, the real image
    processor settings and chat template), saved with save_pretrained."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from aifeedback.zoo.tokenizer import qwen_vl_tokenizer_files

    tokenizer = AutoTokenizer.from_pretrained(str(qwen_vl_tokenizer_files(out)))
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**IMAGE_PROCESSOR), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(str(out))
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer)).save_pretrained(out)


def answer_ids(tokenizer, words) -> dict[str, list[int]]:
    """answer word -> the ids of its one-token spellings (alone or after a space, as written, lower, Capital, UPPER)."""
    out: dict[str, list[int]] = {}
    for word in words:
        ids = set()
        for form in {word, word.lower(), word.capitalize(), word.upper()}:
            for text in (form, " " + form):
                enc = tokenizer.encode(text, add_special_tokens=False)
                if len(enc) == 1 and answer_word(tokenizer.decode(enc)) == word:
                    ids.add(enc[0])
        if not ids:
            raise AifError(f"the VLM's tokenizer has no single token for the answer '{word}'. Fix: use a Qwen2.5-VL "
                           "checkpoint (its tokenizer has one).")
        out[word] = sorted(ids)
    return out


class LocalJudge(PairJudging, Scorer):
    """A judge (vlm_judges.JUDGES) answered by a local Qwen2.5-VL; see the module docstring. A pairwise judge's items
    are (first, second) image pairs, both images in one message before the question (`compare` asks both orders)."""

    def __init__(self, name: str, judge: str, model: str | None, device: str = "cpu", dtype: str = "float32"):
        self.name, self.judge = name, JUDGES[judge]
        self.device, self.dtype = torch.device(device), torch_dtype(dtype)
        self.uses_prompt = self.judge.uses_prompt
        check_vlm(name, judge, model)  # a checkpoint of another kind fails here, naming the fix
        path = str(cached_build("scorer-vlm-tiny", build_tiny)) if model == "tiny" else (model or self.judge.model)
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise model_error(name, path, e) from None
        self.model = self.model.eval().to(self.device)
        self.processor.tokenizer.padding_side = "left"
        self.ids = answer_ids(self.processor.tokenizer, self.judge.words())
        self.transform = QwenImage()  # qwen_vl_utils' defaults, as the model card runs it

    def messages(self, image, prompt: str) -> list[dict]:
        """[image(s), question] as one user message; `image` is one image, or a tuple of a pairwise judge's two."""
        images = image if isinstance(image, tuple) else (image,)
        content = [*({"type": "image", "image": im} for im in images), {"type": "text", "text": self.judge.ask(prompt)}]
        return [{"role": "user", "content": content}]

    def inputs(self, images: list, prompts: list[str]):
        """The processor's batch for (fetch_image'd) images and their prompts, as the model card builds it."""
        texts = [self.processor.apply_chat_template(self.messages(im, p), tokenize=False, add_generation_prompt=True)
                 for im, p in zip(images, prompts)]
        flat = [im for item in images for im in (item if isinstance(item, tuple) else (item,))]
        return self.processor(text=texts, images=flat, padding=True, return_tensors="pt")

    def answer_logprobs(self, images: list, prompts: list[str]) -> torch.Tensor:
        """(batch, vocabulary) float32 log-softmax at each row's answer position."""
        batch = self.inputs(images, prompts).to(self.device)
        with torch.inference_mode():
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def score_items(self, items: list, prompts: list[str]) -> list[float]:
        lp = self.answer_logprobs(items, prompts).cpu()
        scores = []
        for row in lp:
            words = {w: torch.logsumexp(row[ids], 0).item() for w, ids in self.ids.items()}
            scores.append(self.judge.score(words))
        return scores
