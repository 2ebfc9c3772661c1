"""The `aif cache` format: pairs encoded once into a model family's latent space and prompt conditioning, read by
`aif train` instead of images (no VAE encoder and no text encoder in the training step).

What is stored, per usable pair (ties and unlabelled rows are left out; labels say the winner):
- image side: what the VAE's encoder returns for each image, the parameters of its posterior (mean and log
  variance, `latent_dist.parameters`), of the centre crop at the cached resolution, and, when the cache was made
  with --flip, of its mirror image too. The training step replays the family's own `Family.encode_images` on them
  through `StoredPosterior` (a stand-in VAE), so it draws the same posterior sample from the same RNG as it would
  from the images, and any family's latent normalisation (scaling, shift, per-channel statistics) applies as is;
- text side: every tensor `Family.encode_prompts` returns for the caption (and once, for the empty caption that
  --caption-dropout trains on, in empty_prompt.safetensors);
- the micro-conditioning record (time_ids) of each stored crop.
A random crop cannot be cached (every pair would need every crop), so a cache holds centre crops only and training
with --random-crop refuses it. The cache is keyed by KEY_FIELDS; training checks them all and refuses a cache made
for another setup, naming each difference, instead of silently training on the wrong latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from aifeedback.config import input_paths
from aifeedback.errors import AifError, DataError, first_line

STAGE = "cache"
EMPTY_PROMPT = "empty_prompt.safetensors"
KEY_FIELDS = ("model", "vae", "family", "resolution", "random_crop", "flip", "mixed_precision")
IMAGE = "image"  # column image_{orientation}_{side}: orientation 0 = as cropped, 1 = mirrored; side = jpg_0 / jpg_1
PROMPT = "prompt."  # column prompt.KEY: one tensor of encode_prompts' dict


def cache_key(cfg: Any, family: str, resolution: int, mixed_precision: str) -> dict[str, Any]:
    """What a cache is keyed by (data/cache.py KEY_FIELDS), from a cache or a training config: local paths resolved."""
    paths = input_paths(cfg)
    return {"model": str(paths.get("model", cfg.model)), "vae": str(paths["vae"]) if "vae" in paths else cfg.vae,
            "family": family, "resolution": resolution, "random_crop": getattr(cfg, "random_crop", False),
            "flip": cfg.flip, "mixed_precision": mixed_precision}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's raw bytes in its own dtype (bf16 too), shape and dtype kept in the manifest."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def bytes_tensor(data: bytes, spec: dict[str, Any]) -> torch.Tensor:
    """The inverse of tensor_bytes for a manifest spec {'shape': [...], 'dtype': 'float32'}."""
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw.view(getattr(torch, spec["dtype"])).reshape(spec["shape"])


def spec(t: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def is_cache(dataset: str) -> bool:
    """Whether --dataset is an `aif cache` output."""
    from aifeedback.storage.manifest import MANIFEST, read_manifest

    path = Path(dataset).expanduser() / MANIFEST
    return path.is_file() and read_manifest(path.parent).get("stage") == STAGE


@torch.no_grad()
def posterior(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """What the VAE's encoder returns for images in [-1, 1]: its posterior's parameters (N, 2C, h, w). A video-style
    VAE (Qwen-Image's) encodes one frame, (N, 3, 1, H, W), and its frame axis is dropped."""
    if "temperal_downsample" in vae.config:
        return vae.encode(pixels.unsqueeze(2).to(device=vae.device, dtype=vae.dtype)).latent_dist.parameters[:, :, 0]
    return vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.parameters


class StoredPosterior:
    """A stand-in VAE for `Family.encode_images`: `encode(parameters)` gives back the stored posterior, so the family
    samples and normalises cached parameters exactly as it does a VAE's output (anything else - the config, FLUX.2's
    batch-norm statistics - is the real VAE's)."""

    def __init__(self, vae: Any, parameters: torch.Tensor):
        self._vae, self.device, self.dtype = vae, parameters.device, parameters.dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_vae"], name)

    def encode(self, parameters: torch.Tensor) -> Any:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(parameters))


def mismatch_error(path: str, made: dict[str, Any], wanted: dict[str, Any], source: str | None) -> AifError | None:
    """The error for a cache made for another setup than this training run, naming every difference; None if it
    matches."""
    diffs = [f"{k}: the cache has {made.get(k)!r}, this run {wanted[k]!r}" for k in KEY_FIELDS
             if made.get(k) != wanted[k]]
    if not diffs:
        return None
    if wanted["random_crop"]:
        return AifError(f"{path} is an `aif cache`, which holds centre crops only: --random-crop needs the images. "
                        f"Fix: drop --random-crop, or train on the source dataset {source or ''}")
    flags = (f"--model {wanted['model']}" + (f" --vae {wanted['vae']}" if wanted["vae"] else "")
             + f" --resolution {wanted['resolution']} {'--flip' if wanted['flip'] else '--no-flip'} "
             f"--mixed-precision {wanted['mixed_precision']}")
    return AifError(f"{path} is an `aif cache` made for another setup: " + "; ".join(diffs) + ". Fix: train with "
                    f"the cache's settings, or build a cache for these (a mismatched cache is never used: its latents "
                    f"would be wrong): aif cache --dataset {source or 'SOURCE'} {flags} --out NEW_CACHE")


@dataclass
class CachedTransform:
    """The training transform over cached rows: the same random draws as `Transform`, in the same order (caption
    dropout, crop u, v, flip), so a pair's dropout and flip match what the images would get."""

    specs: dict[str, dict[str, Any]]  # column -> {'shape', 'dtype'}
    empty_prompt: dict[str, torch.Tensor]
    flip: bool
    caption_dropout: float = 0.0

    def __call__(self, row: dict[str, Any], winner: int, rng: Any) -> dict[str, Any]:
        drop, _u, _v, flip = rng.random(), rng.random(), rng.random(), rng.random()
        o = int(self.flip and flip < 0.5)
        order = (winner, 1 - winner)
        images = torch.stack([bytes_tensor(row[f"{IMAGE}_{o}_{i}"], self.specs[f"{IMAGE}_{o}_{i}"]) for i in order])
        ids = torch.tensor([row[f"time_ids_{o}_{i}"] for i in order], dtype=torch.float32)
        dropped = drop < self.caption_dropout
        prompt = dict(self.empty_prompt) if dropped else {
            c[len(PROMPT):]: bytes_tensor(row[c], self.specs[c]) for c in self.specs if c.startswith(PROMPT)}
        return {"caption": "" if dropped else row["caption"], "posteriors": images, "prompt": prompt,
                "time_ids": ids}


def damaged_cache(where: Path, what: str) -> DataError:
    return DataError(f"{where}: a damaged `aif cache` ({what}). Fix: build the cache again (aif cache ... --out "
                     "NEW_CACHE, or --overwrite)")


def _header(path: str, manifest: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(tensor specs, key) of a cache's manifest, checked: every spec a torch dtype and a shape of sizes."""
    where = Path(path) / "manifest.json"
    try:
        specs, made, _ = manifest["tensors"], manifest["key"], manifest["config"]
        for column, s in specs.items():
            if not isinstance(getattr(torch, str(s["dtype"]), None), torch.dtype) or not all(
                    isinstance(n, int) and n >= 0 for n in s["shape"]):
                raise ValueError(f"the tensor spec of {column} is {s}")
        missing = [k for k in KEY_FIELDS if k not in made]
        if missing:
            raise ValueError(f"its key lacks {missing}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise damaged_cache(where, f"header: {first_line(e)}") from None
    return specs, made


def _check_length(where: Path, column: str, specs: dict[str, Any], data: Any) -> None:
    s = specs.get(column)
    if s is None or not isinstance(data, (bytes, bytearray)):
        raise damaged_cache(where, f"{column} is not in its header, or not stored as bytes")
    want = math.prod(s["shape"]) * getattr(torch, s["dtype"]).itemsize
    if len(data) != want:
        raise damaged_cache(where, f"{column} holds {len(data)} bytes, its header says {s} ({want} bytes)")


def open_cache(path: str, wanted: dict[str, Any], caption_dropout: float) -> tuple[Any, CachedTransform]:
    """(rows, transform) of a finished cache that matches `wanted` (KEY_FIELDS of the training run)."""
    from safetensors.torch import load_file

    from aifeedback.data.rows import ParquetRows
    from aifeedback.storage.manifest import read_manifest
    from aifeedback.storage.shards import shard_files

    manifest = read_manifest(path, STAGE)
    if not manifest.get("complete"):
        raise AifError(f"{path}: the `aif cache` run did not finish; rerun it (it resumes) before training on it")
    specs, made = _header(path, manifest)
    error = mismatch_error(path, made, wanted, manifest["config"].get("dataset"))
    if error is not None:
        raise error
    rows = ParquetRows(shard_files(path), path)
    empty = Path(path) / EMPTY_PROMPT
    try:
        empty_prompt = load_file(str(empty))
    except Exception as e:  # safetensors' own error type, or OSError
        raise damaged_cache(empty, f"unreadable as safetensors ({first_line(e)})") from None
    for name, t in empty_prompt.items():
        _check_length(empty, f"{PROMPT}{name}", specs, tensor_bytes(t))
    if len(rows):  # one row read back: its stored tensors must have the byte sizes the header says
        row = rows[0]
        for column in specs:
            _check_length(Path(path), column, specs, row[column])
    transform = CachedTransform(specs, empty_prompt, made["flip"], caption_dropout)
    return rows, transform
