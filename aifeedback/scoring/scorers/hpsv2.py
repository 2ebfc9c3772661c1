"""HPS v2 / v2.1 (Wu et al. 2023): open_clip ViT-H-14 fine-tuned on human preference (HPD v2).

Reference (tgxs002/HPSv2): ViT-H-14 with the checkpoint `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` from the
hub repo `xswu/HPSv2` (weights under the key `state_dict`); score = cosine of the normalised features (the HPS
papers report it x100).
Preprocessing = HPSv2's image_transform(resize_longest_max=True) (`ClipTransform` "hpsv2"): RGB, to float in [0, 1],
bicubic antialiased resize of the float tensor so the LONGEST side is 224 (no 8-bit rounding), zero pad to 224x224
(floor half left/top), OpenAI mean/std. Where upstream cannot score an image we do the sensible thing: an RGBA
image loses its alpha (upstream keeps a 4th channel the model rejects; the colour channels are the same), and a
non-square image whose longest side is already 224 is zero-padded to 224x224 (upstream leaves it non-square).
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file

from aifeedback.errors import AifError
from aifeedback.scoring.scorers import SCORER_FIX, model_error, openclip
from aifeedback.storage.torch_files import load_torch_file
from aifeedback.zoo.cache import cached_build

ARCH = "ViT-H-14"
HUB_REPO = "xswu/HPSv2"
VERSIONS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
DEFAULT_VERSION = "v2.0"  # the version the Diffusion-DPO paper reports


def build_tiny(out: Path) -> None:
    """Tiny open_clip CLIP folder plus its weights in HPS checkpoint format ({"state_dict": ...})."""

    openclip.build_tiny(out, openclip.tiny_config(embed_dim=16), seed=1)
    weights = out / "open_clip_model.safetensors"
    torch.save({"state_dict": load_file(str(weights))}, out / "HPS_tiny.pt")
    weights.unlink()  # the architecture comes from the folder, the weights only from the HPS checkpoint


def load_checkpoint(model, path: str) -> None:
    """Load an HPS checkpoint (a dict with `state_dict`, or a bare state dict) into an open_clip model, strictly."""

    ckpt = load_torch_file(path, SCORER_FIX)
    model.load_state_dict(ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt)


def load(name: str, model: str | None, device: str, dtype: str) -> openclip.OpenClipCosine:
    """`hpsv2` (= v2.0), `hpsv2:v2.0`, `hpsv2:v2.1`, `hpsv2:CHECKPOINT.pt` (ViT-H-14), `hpsv2:tiny`."""

    model = model or DEFAULT_VERSION
    if model == "tiny":
        folder = cached_build("scorer-hpsv2-tiny", build_tiny)
        arch, checkpoint = f"local-dir:{folder}", str(folder / "HPS_tiny.pt")
    elif model in VERSIONS:
        arch, checkpoint = ARCH, None
    elif Path(model).is_file():
        arch, checkpoint = ARCH, model
    else:
        raise AifError(
            f"scorer '{name}': unknown HPS model '{model}'. Use one of {', '.join(VERSIONS)}, tiny, "
            f"or the path of an HPS checkpoint file (.pt with a 'state_dict')."
        )
    try:
        if checkpoint is None:

            checkpoint = hf_hub_download(HUB_REPO, VERSIONS[model])
        net, tokenizer = openclip.create(arch, None, load_weights=False)
        load_checkpoint(net, checkpoint)
    except (OSError, RuntimeError, ValueError) as e:
        raise model_error(name, checkpoint or f"{HUB_REPO}/{VERSIONS[model]}", e) from None
    return openclip.OpenClipCosine(name, net, tokenizer, device, dtype)
