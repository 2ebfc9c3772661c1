"""Training transforms of one preference pair: decode + resize + crop (+ flip) both images identically, with every
random number drawn from the generator passed in, or use stored latents when an `aif score` output carries them at
the training resolution (checked by `stored_latent_shape`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aifeedback.data.images import decode_image

LATENT_COLUMNS = ("latent_0", "latent_1", "latent_shape")



@dataclass
class Transform:
    """Per-pair preprocessing; all randomness comes from the numpy Generator passed in."""

    resolution: int
    random_crop: bool = False
    flip: bool = False
    caption_dropout: float = 0.0
    latent_shape: tuple[int, ...] | None = None  # use stored latents of this shape instead of images
    unpaired: bool = False  # one image per row (jpg / latent), labelled desirable or not, instead of a pair

    def __call__(self, row: dict[str, Any], winner: int, rng: Any) -> dict[str, Any]:
        """winner: the index of a pair's preferred image (it comes first); for an unpaired row, 1 if desirable."""
        import torch

        caption = row["caption"]
        if not isinstance(caption, str):  # reported with the row and replaced, like a corrupt image
            raise ValueError(f"caption is {type(caption).__name__}, not text")
        # Draw every random number up front, in a fixed order, so the stream does not depend on the branch taken.
        drop, u, v, flip = rng.random(), rng.random(), rng.random(), rng.random()
        if drop < self.caption_dropout:
            caption = ""
        order = ("",) if self.unpaired else (f"_{winner}", f"_{1 - winner}")  # column suffixes: jpg or jpg_0/_1
        label = {"desirable": bool(winner)} if self.unpaired else {}
        r = self.resolution
        if self.latent_shape is not None:
            from aifeedback.storage.shards import bytes_to_latent

            lat = torch.stack([bytes_to_latent(row[f"latent{i}"], row["latent_shape"]) for i in order])
            ids = torch.tensor([[r, r, 0, 0, r, r]] * len(order), dtype=torch.float32)
            return {"caption": caption, "latents": lat, "time_ids": ids, **label}
        pixels, ids = [], []
        for i in order:
            img = upright(decode_image(row[f"jpg{i}"], rgb=False))
            t, tid = self.image(img, u, v, flip < 0.5 and self.flip)
            pixels.append(t)
            ids.append(tid)
        return {"caption": caption, "pixels": torch.stack(pixels), "time_ids": torch.tensor(ids, dtype=torch.float32),
                **label}

    def image(self, img: Any, u: float, v: float, flip: bool) -> tuple[Any, list[int]]:
        """Resize the short side to the resolution, crop a square (random at (u, v) or centre), maybe flip."""
        import numpy as np
        import torch
        from PIL import Image

        from aifeedback.families.base import time_ids

        r = self.resolution
        w0, h0 = img.size
        s = r / min(w0, h0)
        w, h = max(r, round(w0 * s)), max(r, round(h0 * s))
        img = img.resize((w, h), Image.BICUBIC)
        top, left = (round(u * (h - r)), round(v * (w - r))) if self.random_crop else ((h - r) // 2, (w - r) // 2)
        img = img.crop((left, top, left + r, top + r))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            left = w - left - r  # what was cut away on the left of the image the model sees
        x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        return x, time_ids((h0, w0), (top, left), (r, r))


def upright(img: Any) -> Any:
    """An RGB image turned as its EXIF orientation says, as `datasets` decodes an Image feature: the same pixels
    whether a table is read in place (bytes) or through `datasets` (decoded images)."""
    from PIL import ImageOps

    if img.getexif().get(0x0112) is not None:  # the Orientation tag
        img = ImageOps.exif_transpose(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def latent_source(dataset: str) -> dict[str, Any] | None:
    """The model and VAE that made an `aif score` output's stored latents (recorded from the generate manifest)."""
    from aifeedback.data.labels import manifest_path
    from aifeedback.storage.files import read_json

    path = manifest_path(dataset)
    return read_json(path).get("inputs", {}).get("latents_from") if path.exists() else None


def stored_latent_shape(ds: Any, pairs: list[tuple[int, int]], expected: tuple[int, ...],
                        made_by: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
                        columns: tuple[str, ...] = LATENT_COLUMNS) -> tuple[tuple[int, ...] | None, str]:
    """expected if every kept row stores latents of that shape, made by this model and VAE (so the VAE encoder can
    be skipped), else None and why not. made_by / model: {"model": ..., "vae": ...} of the latents / of training;
    columns: the latent columns (those of an unpaired dataset: latent, latent_shape)."""
    if not all(c in ds.column_names for c in columns):
        return None, "the dataset stores no latents (generate with --save-latents to skip the VAE encoder)"
    if made_by is not None and model is not None and made_by != model:
        # Same shape is not enough: SDXL and SD1.5 latents at 512 px are both 4x64x64, in different spaces.
        return None, (f"the stored latents were made by model {made_by['model']} (vae {made_by.get('vae')}), training "
                      f"uses {model['model']} (vae {model.get('vae')}); encoding the images with the VAE instead")
    from aifeedback.data.rows import read_columns

    shapes = read_columns(ds, ["latent_shape"])["latent_shape"]
    for row, _ in pairs:
        if shapes[row] is None or tuple(shapes[row]) != tuple(expected):
            return None, (f"row {row} stores a latent of shape {shapes[row]}, training needs {list(expected)} "
                          "at this resolution; encoding the images with the VAE instead")
    return tuple(expected), f"using the stored latents {list(expected)} (VAE encoder skipped)"
