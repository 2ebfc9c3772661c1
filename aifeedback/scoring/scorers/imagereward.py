"""ImageReward (Xu et al. 2023), run on transformers' BLIP modules.

Reference (THUDM/ImageReward: ImageReward.py with BLIP's vit.py and med.py): a BLIP ViT-L/16 image encoder (224 px,
LayerNorm eps 1e-6) whose tokens a BERT-base text encoder attends to (cross-attention in every layer; vocabulary
bert-base-uncased + [DEC] + [ENC] = 30524); the text's first ([CLS]) feature goes through an MLP
768-1024-128-64-16-1 (dropout, no activations) in float32; score = (r - 0.16717362830052426) / 1.0333394966054072.
Images: ImageReward's `_transform` (= OpenAI CLIP's; `ClipTransform` "openai"): PIL bicubic resize of the short side
to 224 in the image's own mode, torchvision centre crop, only then RGB, OpenAI mean/std. Prompts: bert-base-uncased,
padded to max_length 35 and truncated there. Weights: the upstream `ImageReward.pt` (hub repo THUDM/ImageReward),
renamed onto BlipVisionModel / BlipTextModel.

Why not the upstream `image-reward` package: it pins timm==0.6.13, which cannot be installed next to open_clip
(timm>=1.0.17), so `pip` refuses the combination.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from aifeedback.families.loading import torch_dtype
from aifeedback.scoring.scorers import SCORER_FIX, model_error
from aifeedback.scoring.scorers.base import ClipTransform, Scorer, normalize
from aifeedback.storage.torch_files import load_torch_file
from aifeedback.zoo.cache import cached_build

HUB_REPO, CHECKPOINT, TOKENIZER = "THUDM/ImageReward", "ImageReward.pt", "bert-base-uncased"
MAX_LENGTH = 35
MEAN, STD = 0.16717362830052426, 1.0333394966054072

VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
              patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
# is_decoder=True is how transformers' BLIP text model gets its cross-attention layers; scoring runs it with
# is_decoder=False (bidirectional self-attention), as BLIP's "multimodal" encoder mode does.
TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu", encoder_hidden_size=1024,
            pad_token_id=0, is_decoder=True)
# Same classes, 224 px and the real vocabulary size; tiny widths.
TINY_VISION = dict(
    VISION, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=32
)
TINY_TEXT = dict(TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 encoder_hidden_size=32)
TINY_WORDS = ("a", "an", "the", "of", "on", "in", "red", "blue", "green", "cat", "dog", "tree", "photo", "car")


def build_net(vision: dict[str, Any], text: dict[str, Any]):
    """The ImageReward network: ModuleDict(vision=BlipVisionModel, text=BlipTextModel, mlp=head)."""

    width = text["hidden_size"]
    nn = torch.nn
    mlp = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    return nn.ModuleDict({
        "vision": BlipVisionModel(BlipVisionConfig(**vision)),
        "text": BlipTextModel(BlipTextConfig(**text), add_pooling_layer=False),
        "mlp": mlp,
    })


# (upstream name, ours) prefixes, {i} = block index; the text encoder's names are the same on both sides.
_NAMES = [
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.blocks.{i}.norm1.", "vision.encoder.layers.{i}.layer_norm1."),
    ("blip.visual_encoder.blocks.{i}.norm2.", "vision.encoder.layers.{i}.layer_norm2."),
    ("blip.visual_encoder.blocks.{i}.attn.qkv.", "vision.encoder.layers.{i}.self_attn.qkv."),
    ("blip.visual_encoder.blocks.{i}.attn.proj.", "vision.encoder.layers.{i}.self_attn.projection."),
    ("blip.visual_encoder.blocks.{i}.mlp.", "vision.encoder.layers.{i}.mlp."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
    ("blip.text_encoder.", "text."),
    ("mlp.layers.", "mlp."),
]


def _rename(key: str, pairs: list[tuple[str, str]]) -> str | None:
    for src, dst in pairs:
        m = re.match(re.escape(src).replace(re.escape("{i}"), r"(\d+)"), key)
        if m:
            return dst.replace("{i}", m.group(1) if m.groups() else "") + key[m.end():]
    return None


def convert_state_dict(upstream: dict[str, Any]) -> dict[str, Any]:
    """ImageReward.pt's state dict -> build_net's names. Other entries (BLIP's contrastive projections, training
    leftovers) are dropped: the upstream loader ignores them too (strict=False)."""
    out = {}
    for key, value in upstream.items():
        new = _rename(key, _NAMES)
        if new is not None and not new.endswith("embeddings.position_ids"):  # a buffer, rebuilt by the model
            out[new] = value
    return out


def load_weights(net, state: dict[str, Any]) -> None:
    """Load an upstream-layout state dict into build_net's modules; every weight must be there."""
    missing, unexpected = net.load_state_dict(convert_state_dict(state), strict=False)
    if missing or unexpected:
        raise ValueError(f"not an ImageReward checkpoint: missing {missing[:4]}, unexpected {unexpected[:4]}")


def upstream_state_dict(net) -> dict[str, Any]:
    """build_net's state dict under the upstream names (the inverse of convert_state_dict)."""
    back = [(dst, src) for src, dst in _NAMES]
    return {_rename(k, back): v for k, v in net.state_dict().items()}


def tokenizer_with_blip_tokens(source: str):
    """A BERT tokenizer with BLIP's two added special tokens ([DEC] as bos, [ENC]), as ImageReward builds it."""

    tok = BertTokenizer.from_pretrained(source)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def build_tiny(out: Path) -> None:
    """A tiny random ImageReward checkpoint in the upstream layout, plus a small BERT WordPiece vocabulary."""

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(upstream_state_dict(build_net(TINY_VISION, TINY_TEXT)), out / CHECKPOINT)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    (out / "vocab.txt").write_text(
        "\n".join(specials + list(TINY_WORDS) + letters + ["##" + c for c in letters]) + "\n"
    )


class ImageReward(Scorer):
    """ImageReward v1.0; batched, in the scorer dtype except the float32 head (as upstream)."""

    def __init__(self, name: str, model: str | None, device: str = "cpu", dtype: str = "float32"):

        self.name, self.device, self.dtype = name, torch.device(device), torch_dtype(dtype)
        if model == "tiny":
            folder = cached_build("scorer-imagereward-tiny", build_tiny)
            checkpoint, tokenizer, vision, text = folder / CHECKPOINT, str(folder), TINY_VISION, TINY_TEXT
        else:
            path = Path(model) if model else None
            if path is not None and path.is_dir():
                path = path / CHECKPOINT
            checkpoint, vision, text = path, VISION, TEXT
            # a folder that also holds the BERT vocabulary (vocab.txt) is used offline; else bert-base-uncased
            tokenizer = str(path.parent) if path is not None and (path.parent / "vocab.txt").exists() else TOKENIZER
        try:
            if checkpoint is None:

                checkpoint = hf_hub_download(HUB_REPO, CHECKPOINT)
            state = load_torch_file(checkpoint, SCORER_FIX)
            net = build_net(vision, text)
            load_weights(net, state.get("state_dict", state))
        except (OSError, RuntimeError, ValueError) as e:
            raise model_error(name, str(checkpoint or f"{HUB_REPO}/{CHECKPOINT}"), e) from None
        try:
            self.tokenizer = tokenizer_with_blip_tokens(tokenizer)
        except (OSError, ValueError) as e:
            raise model_error(name, f"tokenizer {tokenizer}", e) from None
        net["vision"].to(self.dtype)
        net["text"].to(self.dtype)
        self.net = net.eval().to(self.device)
        self.transform = ClipTransform(vision["image_size"], "openai")  # ImageReward's _transform

    def score_items(self, items: list, prompts: list[str]) -> list[float]:

        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            image = self.net["vision"](pixel_values=normalize(items, self.device, self.dtype)).last_hidden_state
            text = self.net["text"](
                input_ids=tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=image,
                encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long, device=self.device),
                is_decoder=False,
            ).last_hidden_state
            reward = self.net["mlp"](text[:, 0, :].float()).squeeze(-1)
        return ((reward - MEAN) / STD).cpu().tolist()
