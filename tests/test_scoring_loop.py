"""The one scoring loop shared by `aif score` and `aif eval` (aifeedback.scoring.loop), with a fake scorer that counts
its calls: every item is scored once, in batches of the given size cut per part, and processes split the work."""

from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from aifeedback.scoring.loop import ImageGroup, given, pair_groups, score_groups


@dataclass(frozen=True)
class Level:
    """The transform: a grey image -> its grey level (so a score says which image it came from)."""

    def __call__(self, image) -> torch.Tensor:
        return torch.tensor([float(image.getpixel((0, 0)))])


class Counting:
    """A scorer that records the batches it is called with; the score of an image is its grey level + offset."""

    def __init__(self, offset: float = 0.0):
        self.transform, self.offset, self.calls = Level(), offset, []

    def score_items(self, items, prompts):
        self.calls.append([float(t[0]) for t in items])
        return [float(t[0]) + self.offset for t in items]


def grey(level: int) -> Image.Image:
    return Image.new("L", (2, 2), color=level)


def groups_of(sizes: list[int]) -> list[ImageGroup]:
    """Groups of the given sizes holding grey images 0, 1, 2, ... in order; an item's key is its level."""
    out, n = [], 0
    for g, size in enumerate(sizes):
        out.append(ImageGroup(g, [[(n + j, grey(n + j), "p") for j in range(size)]]))
        n += size
    return out


def run(groups, scorers, batch_size, **kw):
    return list(score_groups(groups, given, scorers, batch_size, **kw))


def test_every_item_is_scored_once_in_batches_of_the_given_size_cut_per_group():
    a, b = Counting(), Counting(100.0)
    scored = run(groups_of([7, 0, 3]), [a, b], batch_size=3)
    assert a.calls == b.calls == [[0, 1, 2], [3, 4, 5], [6], [7, 8, 9]]  # a batch never spans two groups
    assert [(s.group.id, s.keys, s.done) for s in scored] == [
        (0, [0, 1, 2], False), (0, [3, 4, 5], False), (0, [6], True), (1, [], True), (2, [7, 8, 9], True)]
    for s in scored:
        assert s.scores == [[k, k + 100.0] for k in s.keys] and s.errors == [None] * len(s.keys)


@pytest.mark.parametrize("workers", [0, 2])
def test_two_processes_split_the_groups_and_cover_every_item_once_in_the_same_batches(workers):
    one = Counting()
    alone = run(groups_of([4, 5, 1, 3, 2]), [one], batch_size=2, workers=workers)
    per_rank = []
    for rank in (0, 1):
        scorer = Counting()
        per_rank.append((scorer, run(groups_of([4, 5, 1, 3, 2]), [scorer], batch_size=2, workers=workers,
                                     share=(rank, 2))))
    keys = [k for _, scored in per_rank for s in scored for k in s.keys]
    assert sorted(keys) == list(range(15))  # every item once: none lost, none doubled
    # round-robin groups (with workers, the batches of different groups may interleave)
    assert [sorted(s.group.id for s in scored) for _, scored in per_rank] == [[0, 0, 2, 4], [1, 1, 1, 3, 3]]
    # the batches (so the floats) are the ones a single process forms
    assert sorted(c for scorer, _ in per_rank for c in scorer.calls) == sorted(one.calls)
    assert {k: sc for s in alone for k, sc in zip(s.keys, s.scores, strict=True)} == \
        {k: sc for _, scored in per_rank for s in scored for k, sc in zip(s.keys, s.scores, strict=True)}


def test_pairs_score_each_side_in_its_own_identically_shaped_batches():
    scorer = Counting()
    pairs = ((i, (grey(i), grey(50 + i)), "p") for i in range(5))  # a stream, read lazily
    scored = run(pair_groups(pairs, 3), [scorer], batch_size=2)
    assert scorer.calls == [[0, 1], [2], [50, 51], [52], [3, 4], [53, 54]]
    assert [k for s in scored for k in s.keys][:6] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]


def test_an_unreadable_image_gets_its_reason_and_the_others_their_scores():
    scorer = Counting()
    group = ImageGroup(0, [[("a", grey(1), "p"), ("bad", b"not an image", "p"), ("c", grey(3), "p")]])
    (scored,) = run([group], [scorer], batch_size=8)
    assert scorer.calls == [[1, 3]]
    assert scored.scores == [[1.0], None, [3.0]]
    assert scored.errors[0] is None and scored.errors[2] is None and "cannot decode image" in scored.errors[1]
