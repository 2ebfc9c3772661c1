"""CLIP score as in the Diffusion-DPO paper: open_clip ViT-H-14 `laion2b_s32b_b79k`, cosine(image, text).

Preprocessing as HPS (REFERENCE.md section 4; `ClipTransform` "hpsv2", quirks in hpsv2.py): RGB, float in [0, 1],
bicubic antialiased resize of the float tensor so the longest side is 224, zero pad to 224x224, OpenAI mean/std.
"""

from __future__ import annotations

from pathlib import Path

from aifeedback.scoring.scorers import openclip

ARCH, TAG = "ViT-H-14", "laion2b_s32b_b79k"


def build_tiny(out: Path) -> None:
    """Tiny random open_clip CLIP (same class as ViT-H-14) as a local-dir folder."""
    openclip.build_tiny(out, openclip.tiny_config(embed_dim=16), seed=0)


def load(name: str, model: str | None, device: str, dtype: str) -> openclip.OpenClipCosine:
    """`clip`, `clip:tiny`, `clip:HUB_ID` (open_clip hf-hub repo), `clip:FOLDER`, `clip:CHECKPOINT_FILE`, `clip:TAG`."""
    net, tokenizer = openclip.load_net(name, model, ARCH, TAG, "scorer-clip-tiny", build_tiny)
    return openclip.OpenClipCosine(name, net, tokenizer, device, dtype)
