"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor), prompt-free.

Reference: OpenAI CLIP ViT-L/14 image embedding with OpenAI CLIP's `preprocess` (`ClipTransform` "openai": PIL
bicubic resize of the short side to 224 in the image's own mode, torchvision centre crop, only then RGB, OpenAI
mean/std), L2-normalised, then an MLP 768-1024-128-64-16-1 (dropout between the first layers, no activations)
trained on SAC + LOGOS + AVA; output on the 1-10 AVA scale. The head weights ship with aifeedback (Apache-2.0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aifeedback.families.loading import torch_dtype
from aifeedback.resources import resource_path
from aifeedback.scoring.scorers import SCORER_FIX, openclip
from aifeedback.scoring.scorers.base import ClipTransform, Scorer, normalize
from aifeedback.storage.torch_files import load_torch_file

ARCH, TAG = "ViT-L-14-quickgelu", "openai"  # OpenAI's ViT-L/14 uses QuickGELU
HEAD = resource_path("aesthetic/sac+logos+ava1-l14-linearMSE.pth")


def build_tiny(out: Path) -> None:
    """Tiny open_clip CLIP with a 768-d embedding (so the real head fits) as a local-dir folder."""
    openclip.build_tiny(out, openclip.tiny_config(embed_dim=768, quick_gelu=True), seed=2)


def head():
    """The MLP head with the shipped weights (keys layers.{0,2,4,6,7}.{weight,bias})."""

    mlp = nn.Module()
    mlp.layers = nn.Sequential(
        nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2), nn.Linear(128, 64),
        nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )
    mlp.load_state_dict(load_torch_file(HEAD, SCORER_FIX))
    return mlp.eval()


class Aesthetic(Scorer):
    """MLP(L2-normalised CLIP ViT-L/14 image embedding); the prompt is ignored."""

    uses_prompt = False

    def __init__(self, name: str, model: str | None, device: str = "cpu", dtype: str = "float32"):

        self.name, self.device, self.dtype = name, torch.device(device), torch_dtype(dtype)
        net, _ = openclip.load_net(name, model, ARCH, TAG, "scorer-aesthetic-tiny", build_tiny)
        self.model = net.to(self.device, self.dtype)
        self.head = head().to(self.device)  # float32: 1M parameters, no reason to round them
        self.transform = ClipTransform(openclip.image_size(net), "openai")

    def score_items(self, items: list, prompts: list[str]) -> list[float]:

        with torch.inference_mode():
            emb = self.model.encode_image(normalize(items, self.device, self.dtype)).float()
            emb = torch.nn.functional.normalize(emb, dim=-1)
            return self.head.layers(emb).squeeze(-1).cpu().tolist()
