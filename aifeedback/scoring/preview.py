"""OUT/preview.html of `aif score`: a self-contained page to check the labels by eye before training.

It shows winner | loser | margin for a seeded random sample of pairs and for the closest calls (the smallest
margins, where a wrong label is most likely), built from the eval report's pieces (evaluation.report: thumbnails
as data URIs, cards, the shared template style). Only the chosen pairs' image bytes are read back from the shards.
"""

from __future__ import annotations

import html
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from aifeedback.evaluation.report import figure_card, render_template
from aifeedback.storage.files import atomic_write_text
from aifeedback.storage.shards import shard_files

PREVIEW = "preview.html"
_META = ["caption", "prompt_id", "label_0", "label_1", "score_0", "score_1", "margin", "scorer"]


def write_preview(out: str | Path, n: int = 8, seed: int = 0, thumb: int = 192) -> Path:
    """Write OUT/preview.html from OUT's pair shards: `n` sampled pairs (seeded) and the `n` closest calls."""
    out = Path(out)
    pairs = [(f, i, row) for f in shard_files(out) for i, row in enumerate(pq.read_table(f, columns=_META).to_pylist())]
    sample = sorted(random.Random(seed).sample(range(len(pairs)), min(n, len(pairs))))
    # Ties broken by prompt and position, so the order is the same on every run.
    closest = sorted(range(len(pairs)), key=lambda j: (pairs[j][2]["margin"], pairs[j][2]["prompt_id"], j))[:n]
    images = _images([pairs[j][:2] for j in {*sample, *closest}])
    scorer = pairs[0][2]["scorer"] if pairs else "the scorer"
    page = render_template(
        PREVIEW, title=html.escape(f"aifeedback score: pairs of {out.name}"), scorer=html.escape(scorer),
        counts=f"{len(pairs)} pairs; {len(sample)} sampled (seed {seed}), {len(closest)} closest calls.",
        sample=_cards([pairs[j] for j in sample], images, thumb),
        closest=_cards([pairs[j] for j in closest], images, thumb),
    )
    atomic_write_text(out / PREVIEW, page)
    return out / PREVIEW


def _images(keys: list[tuple[Path, int]]) -> dict[tuple[Path, int], tuple[bytes, bytes]]:
    """(shard, row) -> (jpg_0, jpg_1), reading each needed shard's image columns once."""
    found: dict[tuple[Path, int], tuple[bytes, bytes]] = {}
    for f in sorted({f for f, _ in keys}):
        rows = sorted(i for g, i in keys if g == f)
        for i, r in zip(rows, pq.read_table(f, columns=["jpg_0", "jpg_1"]).take(rows).to_pylist()):
            found[(f, i)] = (r["jpg_0"], r["jpg_1"])
    return found


def _cards(chosen: list[tuple[Path, int, dict[str, Any]]], images, thumb: int) -> str:
    cards = []
    for f, i, row in chosen:
        first_wins = row["label_0"] >= row["label_1"]  # a kept tie (0.5 / 0.5) shows in shard order
        win, lose = (0, 1) if first_wins else (1, 0)
        tie = " (tie)" if row["label_0"] == row["label_1"] else ""
        figures = [(images[(f, i)][win], f"winner{tie} {row[f'score_{win}']:.4g}"),
                   (images[(f, i)][lose], f"loser {row[f'score_{lose}']:.4g}")]
        note = f"margin {row['margin']:.4g}; {html.escape(f.name)} row {i}"
        cards.append(figure_card(html.escape(row["caption"]), figures, note, thumb))
    return "<div class=cards>" + "".join(cards) + "</div>"
