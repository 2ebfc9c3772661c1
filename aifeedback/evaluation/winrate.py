"""Win rates and preference accuracies with 95% confidence intervals (pure numpy, no models).

Outcome of one comparison: 1 when the tuned image scores higher than the base image, 0 when lower, 0.5 on an
exact tie (identical images always tie). The win rate is the mean outcome over all (prompt, seed) comparisons.

Confidence interval: a percentile bootstrap over *prompts*. The seeds of one prompt are not independent samples
(they share the prompt's difficulty), so each resample draws prompts with replacement and keeps all of a prompt's
seeds together. The resampling generator is seeded, so a report is reproducible to the last digit. When every
outcome is the same (e.g. a model against itself: all ties) the interval collapses to that value.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import numpy as np

CI_LEVEL = 0.95
CI_METHOD = "percentile bootstrap over prompts (seeds of a prompt resampled together), 95%"


def outcome(score_tuned: float, score_base: float) -> float:
    """1 if tuned wins, 0 if base wins, 0.5 on an exact tie."""
    if score_tuned > score_base:
        return 1.0
    if score_tuned < score_base:
        return 0.0
    return 0.5


def bootstrap_means(
    values: Sequence[float], groups: Sequence[Hashable] | None = None, resamples: int = 10_000, seed: int = 0,
) -> np.ndarray:
    """mean(values) of each of `resamples` bootstrap resamples of whole groups (prompts), drawn with replacement.

    Groups may hold different numbers of values; a resample's mean is over all values of the drawn groups. No
    values: an empty array.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return np.empty(0)
    if groups is None:
        groups = range(v.size)
    index: dict[Hashable, int] = {}
    gid = np.array([index.setdefault(g, len(index)) for g in groups])
    sums = np.bincount(gid, weights=v)
    counts = np.bincount(gid).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


def percentile_ci(means: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The central `level` interval of bootstrap means (NaN, NaN when there are none)."""
    if means.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float], groups: Sequence[Hashable] | None = None, resamples: int = 10_000, seed: int = 0,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of mean(values), resampling whole groups (prompts) with replacement."""
    return percentile_ci(bootstrap_means(values, groups, resamples, seed), level)


@dataclass
class WinRate:
    """Summary of tuned-vs-base comparisons under one scorer."""

    win_rate: float
    ci_low: float
    ci_high: float
    mean_base: float
    mean_tuned: float
    n: int  # comparisons (prompts x seeds)
    n_prompts: int
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate(
    prompt_ids: Sequence[Hashable], scores_base: Sequence[float], scores_tuned: Sequence[float],
    resamples: int = 10_000, seed: int = 0,
) -> WinRate:
    """Win rate of tuned over base (ties 0.5) with its bootstrap interval and the mean scores of both."""
    if not (len(prompt_ids) == len(scores_base) == len(scores_tuned)):
        raise ValueError("prompt_ids, scores_base and scores_tuned must have the same length")
    if len(prompt_ids) == 0:
        raise ValueError("no comparisons to summarise")
    outcomes = [outcome(t, b) for b, t in zip(scores_base, scores_tuned)]
    lo, hi = bootstrap_ci(outcomes, prompt_ids, resamples, seed)
    return WinRate(
        win_rate=float(np.mean(outcomes)), ci_low=lo, ci_high=hi,
        mean_base=float(np.mean(scores_base)), mean_tuned=float(np.mean(scores_tuned)),
        n=len(outcomes), n_prompts=len(set(prompt_ids)),
        wins=outcomes.count(1.0), ties=outcomes.count(0.5), losses=outcomes.count(0.0),
    )


def win_rate_by(
    keys: Sequence[Hashable], prompt_ids: Sequence[Hashable], scores_base: Sequence[float],
    scores_tuned: Sequence[float], resamples: int = 10_000, seed: int = 0,
) -> dict[Hashable, WinRate]:
    """win_rate for each value of keys (e.g. the PartiPrompts category), in sorted key order."""
    parts: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        parts[k].append(i)
    return {
        k: win_rate([prompt_ids[i] for i in idx], [scores_base[i] for i in idx], [scores_tuned[i] for i in idx],
                    resamples, seed)
        for k, idx in sorted(parts.items(), key=lambda kv: str(kv[0]))
    }


@dataclass
class Accuracy:
    """Agreement of a scorer with human labels on non-tie pairs."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    score_ties: int  # pairs the scorer could not separate (counted 0.5)

    def to_dict(self) -> dict:
        return asdict(self)


def preference_accuracy(
    scores_0: Sequence[float], scores_1: Sequence[float], label_0: Sequence[float], resamples: int = 10_000,
    seed: int = 0,
) -> Accuracy:
    """Share of pairs where the scorer prefers the human winner (label_0 is 1 or 0; ties must be dropped first).

    A pair the scorer scores exactly equal counts 0.5; the interval is a bootstrap over pairs.
    """
    if not (len(scores_0) == len(scores_1) == len(label_0)):
        raise ValueError("scores_0, scores_1 and label_0 must have the same length")
    if len(scores_0) == 0:
        raise ValueError("no non-tie pairs to score")
    bad = [x for x in label_0 if x not in (0.0, 1.0)]
    if bad:
        raise ValueError(f"label_0 must be 1 or 0 (drop ties first); got {bad[0]}")
    correct = [outcome(s0, s1) if l0 == 1.0 else outcome(s1, s0) for s0, s1, l0 in zip(scores_0, scores_1, label_0)]
    lo, hi = bootstrap_ci(correct, None, resamples, seed)
    return Accuracy(float(np.mean(correct)), lo, hi, len(correct), correct.count(0.5))
