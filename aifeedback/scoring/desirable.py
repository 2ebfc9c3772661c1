"""Per-image labels of `aif score --unpaired`: is an image desirable, given its score? Pure (no I/O, no torch).

Two rules (the options of `aif score`):
- threshold T: desirable when score >= T;
- top share q (0 < q <= 1), per prompt or over all images: with n images in the group, k = ceil(q * n) of them,
  the best-scoring, are desirable: every image scoring at least the k-th best score. Images tied with the k-th best
  score are all desirable (a label never depends on the order of equal scores), so a group with ties at the cut
  can get more than k desirable images. q = 0.5 per prompt is "above or at the prompt's median" for an even n.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Sequence

SCOPES = ("prompt", "global")


def top_count(n: int, top: float) -> int:
    """k = ceil(top * n) for 0 < top <= 1 (at least 1 image of a non-empty group); rounded to 9 decimals first,
    so 0.3 * 10 (3.0000000000000004 in floating point) gives 3, not 4."""
    if not 0 < top <= 1:
        raise ValueError(f"the desirable share must be in (0, 1], got {top}")
    return min(n, math.ceil(round(top * n, 9)))


def top_share(scores: Sequence[float], top: float) -> list[bool]:
    """Desirable flags of one group: score >= the k-th best score, k = top_count(len(scores), top)."""
    if not scores:
        return []
    cut = sorted(scores, reverse=True)[top_count(len(scores), top) - 1]
    return [s >= cut for s in scores]


def desirable_flags(scores: Sequence[float], groups: Sequence[Hashable], top: float, scope: str,
                    threshold: float | None = None) -> list[bool]:
    """Desirable flag of each image, from its score and its group (its prompt id), by the module's rules:
    `threshold` when given, else the `top` share of each prompt's images (scope "prompt") or of all (scope
    "global")."""
    if len(scores) != len(groups):
        raise ValueError(f"{len(scores)} scores for {len(groups)} group keys")
    if threshold is not None:
        return [s >= threshold for s in scores]
    if scope == "global":
        return top_share(scores, top)
    if scope != "prompt":
        raise ValueError(f"unknown scope '{scope}'; use one of {', '.join(SCOPES)}")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    flags = [False] * len(scores)
    for idx in members.values():
        for i, flag in zip(idx, top_share([scores[i] for i in idx], top), strict=True):
            flags[i] = flag
    return flags
