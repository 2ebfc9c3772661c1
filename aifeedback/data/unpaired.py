"""Unpaired training data (Diffusion-KTO): one image per row with a desirable flag, in the columns of
`aifeedback.data.labels.UNPAIRED_COLUMNS` (`aif score --unpaired` writes them; see scoring/unpaired.py).

Rows go through the pair machinery of `aifeedback.data.pairs` as (row, label) items, label 1 for desirable and 0
for undesirable: the same seeded order, resume and corrupt-image handling; `Transform(unpaired=True)` loads the one
image (or stored latent) of a row and passes its label on as `desirable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aifeedback.config import shown
from aifeedback.data.pairs import PairStats

LATENTS = ("latent", "latent_shape")  # stored latents of an `aif score --unpaired` output of a generate input


@dataclass
class ImageStats(PairStats):
    """What filtering kept and dropped of unpaired rows (`kept` counts images; a tie cannot happen here)."""

    desirable: int = 0

    def summary(self, name: str) -> str:
        s = (f"{name}: {self.rows} rows, {self.kept} images kept ({self.desirable} desirable, "
             f"{self.kept - self.desirable} undesirable)")
        if self.bad_labels:
            s += (f", {self.bad_labels} rows with a bad desirable flag dropped (it must be true or false; e.g. "
                  + "; ".join(self.bad_label_examples) + ")")
        return s


def filter_desirable(ds: Any, limit: int | None = None) -> tuple[list[tuple[int, int]], ImageStats]:
    """Scan the desirable column only: [(row, 1 if desirable else 0)] of the usable rows, and the counts."""
    from aifeedback.data.rows import read_columns  # local files are read in place (`ParquetRows`)

    flags = read_columns(ds, ["desirable"])["desirable"]
    stats = ImageStats(rows=len(flags))
    keep: list[tuple[int, int]] = []
    for row, flag in enumerate(flags):
        if flag is None or flag not in (True, False):  # null, or a value that is neither (1/0 pass as true/false)
            stats.bad_labels += 1
            if len(stats.bad_label_examples) < 5:
                stats.bad_label_examples.append(f"row {row}: desirable={shown(flag)}")
        elif limit is None or len(keep) < limit:
            keep.append((row, int(bool(flag))))
    stats.kept = len(keep)
    stats.desirable = sum(label for _, label in keep)
    return keep, stats
