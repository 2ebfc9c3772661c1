"""What every scorer shares: the Scorer interface and the image preprocessing of the CLIP family.

A scorer is split in two so that decoding and resizing can run in DataLoader worker processes while the model
runs batched on the accelerator:
  transform(image) -> item      cheap, picklable, CPU (a uint8 3xSxS tensor for the CLIP family)
  score_items(items, prompts)   the model on a batch of items -> float32 scores (higher = better)
Normalisation by the mean/std happens on the device, on the batch, after the uint8 transfer (4x less copying).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# OpenAI CLIP normalisation, used by every scorer here (PickScore, HPS, CLIP, aesthetic, ImageReward).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipTransform:
    """Resize (PIL bicubic) and crop or pad an image to size x size; returns a uint8 (3, size, size) tensor.

    mode "crop": shortest side -> size, then a center crop (PickScore, aesthetic, ImageReward).
    mode "pad":  longest side -> size, then zero padding centred (HPS, CLIP score), so nothing is cut off.
    crop_offset: where a crop with an odd margin lands. "floor" is transformers' CLIPImageProcessor
    ((H - S) // 2), "round" is torchvision's CenterCrop (round((H - S) / 2)); the two differ by one pixel on
    some sizes, so each scorer uses the one its reference implementation uses.
    """

    size: int = 224
    mode: Literal["crop", "pad"] = "crop"
    crop_offset: Literal["floor", "round"] = "floor"

    def __call__(self, image) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        image = image.convert("RGB")
        w, h = image.size
        s = self.size
        if self.mode == "crop":
            # shortest side -> s; the long side is truncated like both references do: int(s * long / short)
            if w <= h:
                nw, nh = s, int(s * h / w)
            else:
                nw, nh = int(s * w / h), s
            image = image.resize((nw, nh), Image.BICUBIC)
            if self.crop_offset == "floor":
                top, left = (nh - s) // 2, (nw - s) // 2
            else:
                top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
            image = image.crop((left, top, left + s, top + s))
        else:
            scale = s / max(w, h)
            nw, nh = round(w * scale), round(h * scale)
            resized = image.resize((nw, nh), Image.BICUBIC)
            image = Image.new("RGB", (s, s), (0, 0, 0))
            image.paste(resized, ((s - nw) // 2, (s - nh) // 2))
        arr = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def normalize(items, device, dtype):
    """uint8 (3, S, S) items (a list, or already stacked) -> OpenAI mean/std applied on `device` in float32 -> dtype."""
    import torch

    x = items if isinstance(items, torch.Tensor) else torch.stack(items)
    x = x.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


class Scorer:
    """A reward model: `score(images, prompts) -> list[float]`, higher = better.

    Subclasses set `transform` and implement `score_items`. `name` is the spec it was loaded with
    (e.g. "pickscore:tiny"); `uses_prompt` is False for image-only scorers (aesthetic, image statistics).
    """

    name: str = ""
    uses_prompt: bool = True
    transform: Any = None

    def score_items(self, items, prompts: list[str]) -> list[float]:
        """Scores of a batch of transformed items (a list, or a stacked tensor of same-shaped ones)."""
        raise NotImplementedError

    def score(self, images: list, prompts: list[str], batch_size: int = 32) -> list[float]:
        """Scores of PIL images for their prompts (one prompt per image), batched."""
        if len(images) != len(prompts):
            raise ValueError(f"score() got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        out: list[float] = []
        for i in range(0, len(images), batch_size):
            items = [self.transform(im) for im in images[i : i + batch_size]]
            out.extend(self.score_items(items, list(prompts[i : i + batch_size])))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def unique_prompts(prompts: list[str]) -> tuple[list[str], list[int]]:
    """Distinct prompts (first-seen order) and each input's index into them: K images of one prompt encode it once."""
    index: dict[str, int] = {}
    where = [index.setdefault(p, len(index)) for p in prompts]
    return list(index), where
