"""The canonical pair columns and the one label rule shared by training and scorer accuracy, and the unpaired
layout's columns (light: no heavy imports)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1")
LABEL_COLUMNS = ("label_0", "label_1")
UNPAIRED_COLUMNS = ("caption", "jpg", "desirable")  # one image per row (`aif score --unpaired`, Diffusion-KTO)
UNPAIRED_DIR = "unpaired"  # where `aif score --unpaired` writes them, inside its output folder
RL_PAIRS_DIR = "pairs"  # an `aif rl` output's best-vs-worst pair of every group, in `aif score`'s pair layout
# A human preference set on the Hub in TRL's layout (prompt, chosen, rejected images; Apache-2.0, ~10K pairs): the
# default of `aif train --data human` since yuvalkirstain/pickapic_v2 answers 404 (April 2025)
OPEN_PREFERENCES = "data-is-better-together/open-image-preferences-v1-binarized"
RANKED_PAIRINGS = ("all", "best-worst")  # --ranked-pairs: the pairs a ranked list of images gives (data/ranked.py)
COLUMNS_HELP = ("read another layout: caption=COL,image_0=COL,image_1=COL,label=COL (label: 0 = image_0 preferred, "
                "1 = image_1, 0.5 = tie; or label_0=COL,label_1=COL as 1/0); images as bytes, `datasets` Images or "
                "paths inside the dataset folder")
RANKED_HELP = ("pairs of a ranked list (HPDv2, ImageRewardDB): all = every two differently ranked images of a prompt, "
               "best-worst = the best against the worst; equal ranks are ties, dropped")


def manifest_path(dataset: str | Path) -> Path:
    """The manifest.json describing a dataset folder: its own, or for the unpaired/ folder of an `aif score` output
    (which has none) the output's."""
    path = Path(dataset).expanduser()
    own = path / "manifest.json"
    if not own.exists() and path.name == UNPAIRED_DIR and (path.parent / "manifest.json").exists():
        return path.parent / "manifest.json"
    return own


def winner_of(l0: Any, l1: Any, has_label: Any = None) -> int | None | str:
    """0 or 1 for a clear winner (1/0, 0/1), None for a tie (0.5/0.5), 'unlabelled' for a row marked
    has_label=False (Pick-a-Pic v2), 'bad' for anything else (NaN, missing, inconsistent)."""
    if has_label is False:
        return "unlabelled"
    try:
        a, b = float(l0), float(l1)
    except (TypeError, ValueError):
        return "bad"
    if math.isnan(a) or math.isnan(b):
        return "bad"
    if (a, b) == (1.0, 0.0):
        return 0
    if (a, b) == (0.0, 1.0):
        return 1
    if a == b == 0.5:
        return None
    return "bad"
