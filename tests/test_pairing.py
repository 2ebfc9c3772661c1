"""The pure rules of `aif score`: normalisation, ensembles, pair selection, ties, agreement, distributions."""

import math

import pytest

from aifeedback.scoring.pairing import (
    combine,
    distribution,
    human_accuracy,
    label,
    normalize_group,
    order_agreement,
    select_pairs,
)


def test_zscore_and_rank_normalisation():
    z = normalize_group([1.0, 2.0, 3.0], "zscore")
    assert sum(z) == pytest.approx(0) and z[2] == pytest.approx(math.sqrt(1.5))
    assert normalize_group([5.0, 5.0], "zscore") == [0.0, 0.0]
    assert normalize_group([10.0, -3.0, 7.0, 7.0], "rank") == [1.0, 0.0, 0.5, 0.5]  # ties share the mean rank
    assert normalize_group([4.0], "rank") == [0.5]
    assert normalize_group([4.0, 1.0], "none") == [4.0, 1.0]
    with pytest.raises(ValueError, match="zscore, rank, none"):
        normalize_group([1.0], "minmax")


def test_combine_weights_normalised_scorers_and_passes_a_single_scorer_through():
    raw = [[1.0, 100.0], [2.0, 300.0], [3.0, 200.0]]
    a = normalize_group([1.0, 2.0, 3.0], "zscore")
    b = normalize_group([100.0, 300.0, 200.0], "zscore")
    assert combine(raw, [0.25, 0.75], "zscore") == pytest.approx([0.25 * x + 0.75 * y for x, y in zip(a, b)])
    assert combine([[1.5], [0.5]], [1.0], "zscore") == [1.5, 0.5]  # raw units kept for one scorer


def test_best_worst_pairs_the_extremes_in_generation_order():
    assert select_pairs([0.3, 0.9, 0.1, 0.5], "best-worst") == [(1, 2)]
    assert select_pairs([0.1, 0.9], "best-worst") == [(0, 1)]
    assert select_pairs([0.4], "best-worst") == []
    assert select_pairs([0.5, 0.5, 0.5], "best-worst") == [(0, 2)]  # ties broken by generation order


def test_all_adjacent_random_pairings():
    s = [0.3, 0.9, 0.1, 0.5, 0.7]
    assert select_pairs(s, "all") == [(i, j) for i in range(5) for j in range(i + 1, 5)]
    # score order 1 (0.9), 4 (0.7), 3 (0.5), 0 (0.3), 2 (0.1)
    assert select_pairs(s, "adjacent") == [(1, 4), (3, 4), (0, 3), (0, 2)]
    r = select_pairs(s, "random", rng_key="p1", seed=0)
    assert len(r) == 2 and len({i for p in r for i in p}) == 4  # disjoint pairs
    assert r == select_pairs(s, "random", rng_key="p1", seed=0)  # reproducible
    assert {tuple(select_pairs(s, "random", rng_key=f"p{i}", seed=0)[0]) for i in range(20)} != {r[0]}
    with pytest.raises(ValueError, match="best-worst, all"):
        select_pairs(s, "tournament")


def test_labels_and_ties():
    assert label(0.8, 0.2, 0.0) == (1.0, 0.0)
    assert label(0.2, 0.8, 0.0) == (0.0, 1.0)
    assert label(0.5, 0.5, 0.0) is None  # exact tie
    assert label(0.5, 0.45, 0.1) is None  # below the margin
    assert label(0.5, 0.35, 0.1) == (1.0, 0.0)


def test_order_agreement_skips_ties():
    pairs = [(1, 0, 5, 4), (1, 0, 4, 5), (0, 1, 0, 2), (1, 1, 0, 2), (2, 1, 3, 3)]
    assert order_agreement(pairs) == (pytest.approx(2 / 3), 3)
    assert order_agreement([]) == (None, 0)


def test_human_accuracy_over_non_tie_pairs():
    items = [
        (1.0, 0.0, 0.9, 0.1),  # right
        (0.0, 1.0, 0.9, 0.1),  # wrong
        (0.5, 0.5, 0.9, 0.1),  # human tie: not counted
        (1.0, 0.0, 0.3, 0.3),  # scorer tie: half
    ]
    assert human_accuracy(items) == (pytest.approx(1.5 / 3), 3)


def test_distribution():
    d = distribution([3.0, 1.0, 2.0, 4.0, 5.0])
    assert d["n"] == 5 and d["mean"] == 3.0 and d["median"] == 3.0 and d["min"] == 1.0 and d["max"] == 5.0
    assert d["p05"] == pytest.approx(1.2) and d["std"] == pytest.approx(math.sqrt(2))
    assert distribution([])["mean"] is None
