"""The toy world's vocabulary: coloured discs on coloured backgrounds, their captions, and which captions the toy
model never sees in pretraining (to measure prompt fidelity on held-out captions). Light (no torch): the demo's
config checks its caption counts against it; images and the model are in zoo/toy.py.
"""

from __future__ import annotations

import random

# Named colours (RGB in [0, 1]); captions name them. Red appears as often as any other colour.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15), "green": (0.15, 0.70, 0.25), "blue": (0.15, 0.30, 0.85),
    "yellow": (0.90, 0.82, 0.20), "orange": (0.95, 0.55, 0.12), "purple": (0.55, 0.25, 0.70),
    "pink": (0.95, 0.55, 0.72), "cyan": (0.25, 0.78, 0.82), "white": (0.94, 0.94, 0.94),
    "black": (0.08, 0.08, 0.08), "gray": (0.50, 0.50, 0.50), "brown": (0.50, 0.31, 0.16),
}


SIZE = 8  # image = latent resolution (pixels)


COLOR_JITTER = 0.06  # uniform +- per channel, so two "red" images differ


NOISE = 0.03  # pixel noise std, in [0, 1] units


HELD_OUT_OFFSETS = (5, 9)  # (background - disc) % 12: captions pretraining never sees


def caption(disc: str, background: str) -> str:
    """The caption of a toy image: 'a red disc on a blue background'."""
    return f"a {disc} disc on a {background} background"


def parse_caption(text: str) -> tuple[str, str] | None:
    """(disc, background) of a toy caption, or None if `text` is not one."""
    words = text.split()
    if len(words) == 7 and caption(words[1], words[5]) == text and {words[1], words[5]} <= COLORS.keys():
        return words[1], words[5]
    return None


def all_captions() -> list[str]:
    """Every caption of the toy world (disc and background colours differ): 132 of them."""
    return [caption(d, b) for d in COLORS for b in COLORS if d != b]


def toy_prompts(n: int, seed: int = 0) -> list[str]:
    """n distinct toy captions in a seeded random order (for generate / eval prompt files)."""

    captions = all_captions()
    if n > len(captions):
        raise ValueError(f"the toy world has {len(captions)} distinct captions; asked for {n}")
    random.Random(seed).shuffle(captions)
    return captions[:n]


def _held_out(disc: int, background: int) -> bool:
    # Two "diagonals" of the 12x12 colour table: each colour is held out as a disc on two backgrounds and as a
    # background under two discs, so every colour is still seen in both roles in pretraining.
    return (background - disc) % len(COLORS) in HELD_OUT_OFFSETS


def pretraining_pairs() -> list[tuple[int, int]]:
    """(disc, background) colour indices of the captions pretraining sees: 108 of the 132."""
    n = len(COLORS)
    return [(d, b) for d in range(n) for b in range(n) if d != b and not _held_out(d, b)]


def held_out_captions() -> list[str]:
    """The 24 captions pretraining never sees: prompt fidelity on them measures composition, not recall."""
    names = list(COLORS)
    return [caption(names[d], names[b]) for d in range(len(names)) for b in range(len(names))
            if d != b and _held_out(d, b)]
