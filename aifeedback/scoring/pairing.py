"""Pure functions of `aif score`: ensemble scores, pairs and labels from scores, agreement and distributions.

No I/O and no torch here, so every rule (which images pair up, what counts as a tie) is unit-tested directly.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Sequence

PAIRINGS = ("best-worst", "all", "adjacent", "random")
NORMALIZATIONS = ("zscore", "rank", "none")


def normalize_group(values: Sequence[float], how: str) -> list[float]:
    """Per-prompt normalisation of one scorer's values before ensembling.

    zscore: (v - mean) / std (population std; 0 when all equal). rank: average rank scaled to [0, 1] (0.5 for a
    single image). none: unchanged.
    """
    n = len(values)
    if how == "none" or n == 0:
        return list(values)
    if how == "zscore":
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        return [(v - mean) / std if std > 0 else 0.0 for v in values]
    if how == "rank":
        if n == 1:
            return [0.5]
        order = sorted(range(n), key=lambda i: values[i])
        ranks = [0.0] * n
        i = 0
        while i < n:  # equal values share their average rank
            j = i
            while j + 1 < n and values[order[j + 1]] == values[order[i]]:
                j += 1
            for t in range(i, j + 1):
                ranks[order[t]] = (i + j) / 2
            i = j + 1
        return [r / (n - 1) for r in ranks]
    raise ValueError(f"unknown normalisation '{how}'; use one of {', '.join(NORMALIZATIONS)}")


def combine(raw: Sequence[Sequence[float]], weights: Sequence[float], how: str) -> list[float]:
    """Ensemble score of each image of one prompt group: sum_s w_s * normalize(scores of scorer s).

    raw[i][s] is scorer s's score of image i. With a single scorer the raw score is returned unchanged, so
    margins stay in that scorer's own units.
    """
    if not raw:
        return []
    n_scorers = len(raw[0])
    if n_scorers == 1:
        return [float(r[0]) for r in raw]
    cols = [normalize_group([r[s] for r in raw], how) for s in range(n_scorers)]
    return [sum(weights[s] * cols[s][i] for s in range(n_scorers)) for i in range(len(raw))]


def select_pairs(scores: Sequence[float], how: str, rng_key: str = "", seed: int = 0) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, among one prompt's images (given in their generation order).

    best-worst: the highest- and the lowest-scoring image (one pair per prompt, the paper's AI-feedback setup).
    all: every pair. adjacent: neighbours in score order (n - 1 pairs). random: a seeded shuffle cut into
    disjoint pairs (floor(n / 2) pairs), reproducible from (seed, rng_key).
    Ties in the score order are broken by generation order, so the result is deterministic.
    """
    n = len(scores)
    if n < 2:
        return []
    if how == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    order = sorted(range(n), key=lambda i: (-scores[i], i))  # best first
    if how == "best-worst":
        pairs = [(order[0], order[-1])]
    elif how == "adjacent":
        pairs = [(order[t], order[t + 1]) for t in range(n - 1)]
    elif how == "random":
        digest = hashlib.sha256(f"{seed}:{rng_key}".encode()).digest()
        perm = list(range(n))
        random.Random(int.from_bytes(digest[:8], "little")).shuffle(perm)
        pairs = [(perm[t], perm[t + 1]) for t in range(0, n - 1, 2)]
    else:
        raise ValueError(f"unknown pairing '{how}'; use one of {', '.join(PAIRINGS)}")
    return [(min(a, b), max(a, b)) for a, b in pairs]


def label(score_0: float, score_1: float, min_margin: float) -> tuple[float, float] | None:
    """(label_0, label_1): 1/0 for a clear winner, None for a tie (equal, or margin below min_margin)."""
    margin = abs(score_0 - score_1)
    if margin == 0 or margin < min_margin:
        return None
    return (1.0, 0.0) if score_0 > score_1 else (0.0, 1.0)


def order_agreement(pairs: Sequence[tuple[float, float, float, float]]) -> tuple[float | None, int]:
    """Share of pairs on which two scorers order the images the same way, over pairs neither scores as a tie.

    Each item is (a_0, a_1, b_0, b_1): scorer a's and scorer b's scores of the pair's two images.
    """
    same = total = 0
    for a0, a1, b0, b1 in pairs:
        da, db = a0 - a1, b0 - b1
        if da == 0 or db == 0:
            continue
        total += 1
        same += (da > 0) == (db > 0)
    return (same / total if total else None), total


def human_accuracy(items: Sequence[tuple[float, float, float, float]]) -> tuple[float | None, int]:
    """Accuracy of a scorer against human labels over non-tie human pairs (Pick-a-Pic / the paper's Table 2).

    Each item is (human label_0, human label_1, score_0, score_1); a scorer tie counts as half right.
    """
    right = 0.0
    n = 0
    for h0, h1, s0, s1 in items:
        if h0 is None or h1 is None or h0 == h1 or any(isinstance(v, float) and math.isnan(v) for v in (h0, h1)):
            continue
        n += 1
        if s0 == s1:
            right += 0.5
        elif (s0 > s1) == (h0 > h1):
            right += 1.0
    return (right / n if n else None), n


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, std, min, p05, median, p95, max of a list of numbers (None when empty)."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "p05": None, "median": None, "p95": None, "max": None}
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / n)

    def q(p: float) -> float:  # linear interpolation between order statistics
        pos = p * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return {"n": n, "mean": mean, "std": std, "min": v[0], "p05": q(0.05), "median": q(0.5), "p95": q(0.95),
            "max": v[-1]}
