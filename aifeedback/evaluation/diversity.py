"""Image diversity of a generate output: how different a prompt's images are from each other.

The measure: for each prompt with at least two images, the mean over its image pairs (i < j) of the RMS pixel
difference, pixel values in [0, 1] after shrinking each image so its longer side is at most `THUMB` px; then the
mean over prompts. 0 means every seed of a prompt gives the same image (mode collapse); two independent uniform
random images score about 0.41 (sqrt(1/6)).

Why pixels: it needs no model (works offline, for every family, in the toy world where images differ only by
colour and shape), and its value is reproducible by hand. Why per prompt: collapse is the policy drawing one
image whatever the seed; images of different prompts differ anyway. Why a thumbnail: it compares colour and layout
and costs the same for 8 px and 1024 px images, not pixel-level texture. What it misses: two images that differ
only in content at the same colours and layout (a real model's cat vs dog) are close in pixels; a feature-space
distance (CLIP embeddings) would see that, at the price of a model.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aifeedback.data.images import decode_image
from aifeedback.storage.shards import read_rows

THUMB = 32  # longest side (px) images are compared at


def pixels(image: Any, thumb: int = THUMB) -> np.ndarray:
    """An image (bytes or PIL) as an H x W x 3 float array in [0, 1], shrunk (box filter) to fit thumb x thumb."""
    from PIL import Image

    img = decode_image(image)
    if max(img.size) > thumb:
        img = img.copy()
        img.thumbnail((thumb, thumb), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float64) / 255.0


def rms_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean squared difference of two equally shaped pixel arrays."""
    if a.shape != b.shape:
        raise ValueError(f"images of different sizes {a.shape} and {b.shape} cannot be compared")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def prompt_diversity(images: Sequence[np.ndarray]) -> float:
    """Mean RMS distance over the pairs of one prompt's images (at least two)."""
    if len(images) < 2:
        raise ValueError("diversity needs at least two images of the prompt")
    return float(np.mean([rms_distance(a, b) for a, b in combinations(images, 2)]))


def diversity(groups: dict[str, Sequence[np.ndarray]]) -> dict[str, Any]:
    """{'mean': mean over prompts of prompt_diversity, 'prompts': how many had >= 2 images} (mean None if none)."""
    values = [prompt_diversity(v) for v in groups.values() if len(v) >= 2]
    return {"mean": float(np.mean(values)) if values else None, "prompts": len(values)}


def folder_diversity(folder: str | Path, thumb: int = THUMB) -> dict[str, Any]:
    """`diversity` of an `aif generate` output folder (its images grouped by prompt_id)."""
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for row in read_rows(folder, ["prompt_id", "image"]):
        groups[row["prompt_id"]].append(pixels(row["image"], thumb))
    return diversity(groups)
