"""Image-statistic scorers: cheap, deterministic rewards computed from pixels alone (the toy world's reward).

All work on the RGB image scaled to [0, 1], at its own resolution, and ignore the prompt:
  redness     mean(R) - mean((G + B) / 2)                          in [-1, 1]
  brightness  mean Rec. 601 luma 0.299 R + 0.587 G + 0.114 B         in [0, 1]
  saturation  mean HSV saturation (max - min) / max (0 where max = 0) in [0, 1]
  color:NAME  1 - mean Euclidean RGB distance to the colour / sqrt(3) in [0, 1]; NAME is any CSS colour name or
              #rrggbb (PIL.ImageColor), e.g. color:orange, color:#3366cc
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import ImageColor

from aifeedback.errors import AifError
from aifeedback.scoring.scorers.base import Scorer

KINDS = ("redness", "brightness", "saturation", "color")


@dataclass(frozen=True)
class StatTransform:
    """image -> a 1-element float64 tensor holding the statistic (computed in the DataLoader worker)."""

    kind: str
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __call__(self, image):

        x = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        if self.kind == "redness":
            v = r.mean() - (g.mean() + b.mean()) / 2
        elif self.kind == "brightness":
            v = (0.299 * r + 0.587 * g + 0.114 * b).mean()
        elif self.kind == "saturation":
            mx, mn = x.max(-1), x.min(-1)
            v = np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0).mean()
        else:
            v = 1.0 - np.linalg.norm(x - np.asarray(self.target), axis=-1).mean() / np.sqrt(3.0)
        return torch.tensor([float(v)], dtype=torch.float64)


class ImageStat(Scorer):
    """A statistic of the pixels; runs on the CPU whatever the device."""

    uses_prompt = False

    def __init__(self, name: str, kind: str, arg: str | None):

        self.name = name
        if kind == "color":

            if not arg:
                raise AifError("scorer 'color' needs a colour: color:NAME, e.g. color:red or color:#ff8800")
            try:
                rgb = ImageColor.getrgb(arg)[:3]
            except ValueError:
                raise AifError(
                    f"scorer '{name}': unknown colour '{arg}'. Use a CSS colour name (red, orange, teal, ...) "
                    f"or #rrggbb."
                ) from None
            self.transform = StatTransform("color", tuple(c / 255.0 for c in rgb))
        else:
            if arg:
                raise AifError(f"scorer '{name}': {kind} takes no model; use plain '{kind}'")
            self.transform = StatTransform(kind)

    def score_items(self, items: list, prompts: list[str]) -> list[float]:
        return [float(t[0]) for t in items]
