"""toy-fidelity: does an image of the toy world show the colours its caption names (`aifeedback.zoo.toy.faithful`)?

1 when the disc colour (centre pixels) and the background colour (border ring), each read as the nearest of the toy
world's 12 named colours, are both the ones the caption names, else 0; so its mean over images is the prompt
fidelity. A reward that is bought with fidelity (reward hacking) shows as this mean dropping from base to tuned.
"""

from __future__ import annotations

from dataclasses import dataclass

from aifeedback.errors import AifError
from aifeedback.scoring.scorers.base import Scorer
from aifeedback.zoo.toy import recognise
from aifeedback.zoo.toy_world import caption, parse_caption


@dataclass(frozen=True)
class RecogniseTransform:
    """image -> its (disc, background) colour names (computed in the DataLoader worker)."""

    def __call__(self, image) -> tuple[str, str]:

        return recognise([image])[0]


class ToyFidelity(Scorer):
    """1.0 if the image shows its toy caption's disc and background colours, else 0.0; runs on the CPU."""

    uses_prompt = True

    def __init__(self, name: str, arg: str | None):

        if arg:
            raise AifError(f"scorer '{name}': toy-fidelity takes no model; use plain 'toy-fidelity'")
        self.name = name
        self.transform = RecogniseTransform()

    def score_items(self, items: list, prompts: list[str]) -> list[float]:

        scores = []
        for (disc, background), prompt in zip(items, prompts):
            if parse_caption(prompt) is None:
                raise AifError(f"scorer '{self.name}' scores toy captions only ('{caption('red', 'blue')}'), "
                               f"got '{prompt}'; use it on `aif demo` / toy-sd15 images")
            scores.append(float(caption(disc, background) == prompt))
        return scores
