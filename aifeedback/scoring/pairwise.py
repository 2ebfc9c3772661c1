"""Phase 1 of `aif score` with a pairwise judge (vlm-pairwise, unifiedreward-pairwise): instead of one score per
image, every two images of a unit (a prompt's K candidates, or an input pair) are shown to the judge together, both
orders averaged (vlm_judges.PairJudging.compare), so each image gets

    wins[j] = P(this image is better than the unit's image in slot j)    (None for itself or an unreadable image)
    raw     = [mean of its wins]                                          (its mean probability of winning)

`raw` picks the pairs (--pairing best-worst: the highest vs the lowest mean win probability); a pair's label and its
score_0 / score_1 are then the judge's direct verdict on those two images, P(jpg_0 better) and 1 - that
(labels.unit_pairs), not a comparison of two separate scores. A unit of two images (a pair input, K = 2) is one
verdict. Cost: K (K - 1) requests or forward pairs per prompt (both orders of K (K - 1) / 2 pairs).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from aifeedback.data.images import decode_image


def judge_units(judge, units: list, start: int, read, batch_size: int) -> list[dict[str, Any]]:
    """The per-image score rows (labels.scores_schema) of units start, start + 1, ...: every pair of a unit's
    readable images judged, batched over the shard's units."""
    rows, pairs = [], []  # pairs: (row index of a, row index of b, image a, image b, prompt)
    for n, unit in enumerate(units):
        images = []
        for slot, ((row, col), value) in enumerate(zip(unit.images, read(list(unit.images)), strict=True)):
            try:
                image, error = decode_image(value, rgb=False), None
            except ValueError as e:
                image, error = None, str(e)
            rows.append({"unit": start + n, "slot": slot, "row": row, "column": col, "prompt_id": unit.prompt_id,
                         "raw": None, "error": error, "wins": [None] * len(unit.images)})
            images.append((len(rows) - 1, image))
        pairs += [(ia, ib, a, b, unit.prompt) for (ia, a), (ib, b) in combinations(images, 2)
                  if a is not None and b is not None]
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        ps = judge.compare([p[2] for p in batch], [p[3] for p in batch], [p[4] for p in batch],
                           batch_size=max(1, batch_size // 2))
        for (ia, ib, *_), p in zip(batch, ps, strict=True):
            rows[ia]["wins"][rows[ib]["slot"]] = p
            rows[ib]["wins"][rows[ia]["slot"]] = 1.0 - p
    for r in rows:
        known = [w for w in r["wins"] if w is not None]
        if r["error"] is None and known:
            r["raw"] = [sum(known) / len(known)]
        elif r["error"] is None:
            r["error"] = "no other readable image of its prompt to compare it with"
    return rows
