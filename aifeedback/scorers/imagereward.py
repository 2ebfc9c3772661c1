"""ImageReward (Xu et al. 2023) through its upstream package `image-reward` (optional extra).

Reference: BLIP ViT-L/16 + BERT cross-attention text encoder, MLP 768-1024-128-64-16-1, checkpoint
`THUDM/ImageReward` (`ImageReward.pt` + `med_config.json`); images: shortest side -> 224 bicubic, center crop,
OpenAI mean/std; prompt tokenised with bert-base-uncased, max_length 35; score = (r - 0.16717362830052426) /
1.0333394966054072. The package's own `score()` does all of this; we call it per prompt.
"""

from __future__ import annotations

from aifeedback.errors import AifError
from aifeedback.scorers.base import Scorer

INSTALL = "pip install 'aifeedback[imagereward]'"


class ImageRewardMissing(AifError):
    """The optional `image-reward` package is not installed."""


class ImageReward(Scorer):
    """The upstream ImageReward model; items are the PIL images themselves (the package preprocesses them)."""

    def __init__(self, name: str, model: str | None, device: str = "cpu", dtype: str = "float32"):
        try:
            import ImageReward as RM  # the `image-reward` package
        except ImportError:
            raise ImageRewardMissing(
                f"scorer '{name}' needs the optional ImageReward package: {INSTALL} "
                f"(or `pip install image-reward`). Other scorers: pickscore, hpsv2, clip, aesthetic."
            ) from None
        if model == "tiny":
            raise AifError(f"scorer '{name}': ImageReward has no tiny offline variant (it is an external package)")
        self.name = name
        self.model = RM.load(model or "ImageReward-v1.0", device=device).eval()
        self.transform = _identity

    def score_items(self, items: list, prompts: list[str]) -> list[float]:
        import torch

        out = [0.0] * len(items)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        with torch.inference_mode():
            for prompt, idx in groups.items():
                scores = self.model.score(prompt, [items[i] for i in idx])
                scores = scores if isinstance(scores, list) else [scores]
                for i, s in zip(idx, scores):
                    out[i] = float(s)
        return out


def _identity(image):
    return image.convert("RGB")
