"""Shared by the open_clip scorers (CLIP score, HPSv2, aesthetic): loading by name, tiny models, cosine scoring."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from safetensors.torch import save_file

from aifeedback.families.loading import torch_dtype
from aifeedback.scoring.scorers import model_error
from aifeedback.scoring.scorers.base import ClipTransform, Scorer, normalize, unique_prompts
from aifeedback.zoo.cache import cached_build


def tiny_config(embed_dim: int = 16, quick_gelu: bool = False) -> dict[str, Any]:
    """An open_clip model_cfg like ViT-H-14's / ViT-L-14's but tiny; the image side keeps 224 px."""
    return {
        "embed_dim": embed_dim,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def build_tiny(out: Path, model_cfg: dict[str, Any], seed: int = 0) -> None:
    """Save a random open_clip CLIP as a `local-dir:` folder (open_clip_config.json + open_clip_model.safetensors)."""

    torch.manual_seed(seed)
    cfg = dict(model_cfg)
    model = open_clip.CLIP(**cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))


def create(arch: str, pretrained: str | None, load_weights: bool = True):
    """open_clip.create_model + tokenizer.

    arch is a built-in name ("ViT-H-14"), "hf-hub:org/repo" or "local-dir:PATH".
    """

    root = logging.getLogger()
    level = root.level
    if not load_weights:  # open_clip warns "initialized randomly"; the caller loads the weights itself
        root.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(arch, pretrained=pretrained, load_weights=load_weights)
    finally:
        root.setLevel(level)
    return model.eval(), open_clip.get_tokenizer(arch)


def resolve(model: str | None, default_arch: str, default_tag: str | None) -> tuple[str, str | None]:
    """Map a scorer's MODEL part to (open_clip model name, pretrained): hub id, local folder or checkpoint file."""
    if model is None:
        return default_arch, default_tag
    p = Path(model)
    if p.is_dir():
        return f"local-dir:{p}", None
    if p.is_file():
        return default_arch, str(p)
    if model.startswith(("hf-hub:", "local-dir:")):
        return model, None
    if "/" in model:
        return f"hf-hub:{model}", None
    return default_arch, model  # an open_clip pretrained tag of the default architecture


def load_net(name: str, model: str | None, default_arch: str, default_tag: str | None, tiny_key: str,
             build_tiny_model: Callable[[Path], None]):
    """(model, tokenizer) for a scorer spec's MODEL part: `tiny`, hub id, folder, checkpoint file or pretrained tag."""

    if model == "tiny":
        arch, pretrained = f"local-dir:{cached_build(tiny_key, build_tiny_model)}", None
    else:
        arch, pretrained = resolve(model, default_arch, default_tag)
    try:
        return create(arch, pretrained)
    except (OSError, RuntimeError, ValueError) as e:
        raise model_error(name, pretrained or arch, e) from None


class OpenClipCosine(Scorer):
    """cosine(image, text) of an open_clip model, images preprocessed as HPSv2 does (longest side, zero padding)."""

    def __init__(self, name: str, model, tokenizer, device: str, dtype: str):

        self.name, self.device, self.dtype = name, torch.device(device), torch_dtype(dtype)
        self.model = model.to(self.device, self.dtype)
        self.tokenizer = tokenizer
        self.transform = ClipTransform(image_size(model), "hpsv2")

    def score_items(self, items: list, prompts: list[str]) -> list[float]:

        texts, where = unique_prompts(prompts)
        with torch.inference_mode():
            img = self.model.encode_image(normalize(items, self.device, self.dtype))
            txt = self.model.encode_text(self.tokenizer(texts).to(self.device))
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)[torch.tensor(where, device=img.device)]
            return (img * txt).sum(-1).cpu().tolist()


def image_size(model) -> int:
    """The square input size of an open_clip model's vision tower."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
