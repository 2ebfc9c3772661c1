"""The canonical pair columns and the one label rule shared by training and scorer accuracy (light: no imports)."""

from __future__ import annotations

import math
from typing import Any

PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1")
LABEL_COLUMNS = ("label_0", "label_1")


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
