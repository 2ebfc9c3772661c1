"""PickScore (Kirstain et al. 2023): CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

Reference: model `yuvalkirstain/PickScore_v1` (transformers CLIPModel), processor
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` as PickScore's pinned transformers (4.27.3) runs it: convert to RGB (alpha
dropped; newer transformers composite onto white instead), PIL bicubic resize of the short side to 224, centre crop
224 with floored offsets, OpenAI mean/std (`ClipTransform` "transformers");
score = logit_scale.exp() * cos(image embedding, text embedding).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from aifeedback.families.loading import torch_dtype
from aifeedback.scoring.scorers import model_error
from aifeedback.scoring.scorers.base import ClipTransform, Scorer, normalize, unique_prompts
from aifeedback.zoo.cache import cached_build
from aifeedback.zoo.tokenizer import clip_tokenizer

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

# The CLIPConfig of yuvalkirstain/PickScore_v1 (= laion/CLIP-ViT-H-14-laion2B-s32B-b79K, which it fine-tunes).
# Written down so tests can check the architecture without a download and the benchmark can build it.
REAL_CONFIG = dict(
    projection_dim=1024,
    logit_scale_init_value=2.6592,
    text_config=dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
        projection_dim=1024,
    ),
    vision_config=dict(
        hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, patch_size=14,
        image_size=224, hidden_act="gelu", projection_dim=1024,
    ),
)

# Same classes and the real image size (224), tiny widths. bos/eos/pad ids as in the real config, so the text
# model pools at the highest token id (the EOS) exactly like PickScore does.
TINY_CONFIG = dict(
    projection_dim=16,
    logit_scale_init_value=2.6592,
    text_config=dict(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
        projection_dim=16,
    ),
    vision_config=dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, patch_size=32,
        image_size=224, hidden_act="gelu", projection_dim=16,
    ),
)


def build_tiny(out: Path) -> None:
    """A tiny random CLIPModel with its (real, offline) CLIP tokenizer, saved with save_pretrained."""

    torch.manual_seed(0)
    CLIPModel(CLIPConfig(**TINY_CONFIG)).save_pretrained(out)
    clip_tokenizer().save_pretrained(out)


class PickScore(Scorer):
    """logit_scale.exp() * cosine of PickScore's image and text embeddings."""

    def __init__(self, name: str, model: str | None, device: str = "cpu", dtype: str = "float32"):

        self.name, self.device, self.dtype = name, torch.device(device), torch_dtype(dtype)
        if model == "tiny":
            path = str(cached_build("scorer-pickscore-tiny", build_tiny))
            tokenizer_path = path
        else:
            path = model or MODEL
            # A local copy that ships its own tokenizer uses it; otherwise the reference processor's tokenizer.
            tokenizer_path = path if (Path(path) / "tokenizer_config.json").exists() else PROCESSOR
        try:
            self.model = CLIPModel.from_pretrained(path, torch_dtype=self.dtype).eval().to(self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        except (OSError, ValueError) as e:
            raise model_error(name, path, e) from None
        self.transform = ClipTransform(self.model.config.vision_config.image_size, "transformers")

    def score_items(self, items: list, prompts: list[str]) -> list[float]:

        texts, where = unique_prompts(prompts)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            m = self.model
            img = m.visual_projection(
                m.vision_model(pixel_values=normalize(items, self.device, self.dtype)).pooler_output
            )
            txt = m.text_projection(m.text_model(**tok).pooler_output)
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)[torch.tensor(where, device=img.device)]
            scores = m.logit_scale.float().exp() * (img * txt).sum(-1)
        return scores.cpu().tolist()
