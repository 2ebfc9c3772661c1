"""What every scorer shares: the Scorer interface and the image preprocessing of the CLIP family.

A scorer is split in two so that decoding and resizing can run in DataLoader worker processes while the model
runs batched on the accelerator:
  transform(image) -> item      cheap, picklable, CPU (a 3xSxS tensor for the CLIP family: uint8 pixels, or float
                                in [0, 1] where the reference resizes float tensors)
  score_items(items, prompts)   the model on a batch of items -> float32 scores (higher = better)
Normalisation by the mean/std happens on the device, on the batch, after the transfer (uint8: 4x less copying).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# OpenAI CLIP normalisation, used by every scorer here (PickScore, HPS, CLIP, aesthetic, ImageReward).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipTransform:
    """An image (any PIL mode) -> the (3, size, size) tensor its reference implementation feeds the model, before
    the mean/std (`normalize`). Each reference's steps, in its order (REFERENCE.md section 4):

    "transformers"  CLIPImageProcessor as PickScore's pinned transformers (4.27) runs it (PickScore): convert to RGB,
                    PIL bicubic resize of the short side to size (long side int(size * long / short)), centre crop
                    with floored offsets. -> uint8
    "openai"        OpenAI CLIP's `_transform` (aesthetic, ImageReward): the same resize, but in the image's own mode
                    (PIL resizes a palette image with nearest neighbour and an RGBA one weighted by its alpha), a
                    torchvision centre crop (offsets round((H - size) / 2)), and only then RGB. -> uint8
    "hpsv2"         HPSv2's image_transform(resize_longest_max=True) (HPSv2, CLIP score): RGB, to float in [0, 1]
                    FIRST, bicubic antialiased resize of that float tensor so the LONGEST side is size (each side
                    round(side * size / longest), no 8-bit rounding, no clamping), zero padding to size x size
                    (floor half left/top). -> float32
                    Two upstream quirks are not kept, because upstream cannot score those images at all: RGBA stays
                    4 channels there (the 3-channel model rejects it), here alpha is dropped (the colour channels are
                    upstream's); and an image whose longest side is already `size` is neither resized nor padded
                    there (a non-square one then fits no batch nor the model), here it is padded (not resized).
    """

    size: int = 224
    reference: Literal["transformers", "openai", "hpsv2"] = "transformers"

    def __post_init__(self):
        if self.reference not in ("transformers", "openai", "hpsv2"):
            raise ValueError(f"ClipTransform reference '{self.reference}': use transformers, openai or hpsv2")

    def __call__(self, image) -> Any:
        if self.reference == "hpsv2":
            return _resize_longest_and_pad(image, self.size)
        if self.reference == "transformers":
            image = _rgb(image)
        image = _resize_short_and_crop(image, self.size, floor_offsets=self.reference == "transformers")
        return _uint8_chw(_rgb(image))


def _rgb(image):
    """PIL's own RGB conversion (alpha dropped, not composited), skipped when already RGB (no copy)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def _uint8_chw(image):
    """An RGB PIL image -> a uint8 (3, H, W) tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def _resize_short_and_crop(image, size: int, floor_offsets: bool):
    """PIL bicubic resize of the short side to `size` (in the image's mode), then a size x size centre crop."""
    from PIL import Image

    w, h = image.size
    # the long side is truncated as both references do (torchvision and transformers): int(size * long / short)
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((nw, nh), Image.BICUBIC)  # PIL itself uses nearest for modes P and 1
    if floor_offsets:  # transformers' center_crop
        top, left = (nh - size) // 2, (nw - size) // 2
    else:  # torchvision's CenterCrop (Python's round: halves go to the even side)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _resize_longest_and_pad(image, size: int):
    """Float pixels in [0, 1], resized (bicubic, antialiased) so the longest side is `size`, zero-padded square."""
    import torch

    x = _uint8_chw(_rgb(image)).contiguous().float().div(255.0)  # = torchvision's ToTensor
    h, w = x.shape[1:]
    scale = size / float(max(h, w))  # computed as upstream does, so round() sees the same floats
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False,
                                            antialias=True)[0]
        h, w = nh, nw
    pad_h, pad_w = size - h, size - w
    return torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def normalize(items, device, dtype):
    """(3, S, S) items (a list, or already stacked; uint8 pixels or float in [0, 1]) -> OpenAI mean/std applied on
    `device` in float32 -> dtype."""
    import torch

    x = items if isinstance(items, torch.Tensor) else torch.stack(items)
    x = x.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # float items are already in [0, 1]
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
