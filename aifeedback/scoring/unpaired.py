"""`aif score --unpaired`: one row per scored image, labelled desirable or not, next to the pairs.

Layout (OUT/unpaired/images-NNNNN.parquet, shard i holding the images of the same units as data/train-i.parquet;
not named train-*, so `load_dataset("parquet", data_dir=OUT)` still reads the pairs only, and
`load_dataset("parquet", data_dir=OUT/unpaired)` reads these):
  caption, jpg (image bytes), desirable (bool), score (the ensemble's, what the label is cut on), prompt_id, scorer,
  scores (each scorer's raw score); from a generate input also seed, k, category and (--save-latents) latent,
  latent_shape; from a Pick-a-Pic input source_row and column (jpg_0 or jpg_1).
The labels come from `aifeedback.scoring.desirable`, over every scored image of the job (a per-prompt or global cut
needs them all), so every process labels every image the same way. Unreadable images get no row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from aifeedback.data.labels import UNPAIRED_DIR
from aifeedback.scoring.desirable import desirable_flags

__all__ = ["UNPAIRED_DIR", "image_labels", "unpaired_counts", "unpaired_path", "unpaired_rows", "unpaired_schema"]


def unpaired_path(out: Path, index: int) -> Path:
    return Path(out) / UNPAIRED_DIR / f"images-{index:05d}.parquet"


def image_labels(cfg, table, combined) -> dict[tuple[int, int], bool]:
    """(unit, slot) -> desirable, for every scored image (in unit, slot order)."""
    keys = [(u, r.slot, r.prompt_id) for u in sorted(table) for r in table[u] if r.raw is not None]
    flags = desirable_flags([combined[(u, s)] for u, s, _ in keys], [p for _, _, p in keys], cfg.desirable_top,
                            cfg.desirable_scope, cfg.desirable_threshold)
    return {(u, s): f for (u, s, _), f in zip(keys, flags, strict=True)}


def unpaired_schema(cfg, inp) -> pa.Schema:
    """The columns of every unpaired shard of a job (fixed, so an empty shard matches the others)."""
    raw = pa.struct([(s, pa.float64()) for s in cfg.scorer])
    fields = [pa.field("caption", pa.string()), pa.field("jpg", pa.binary()), pa.field("desirable", pa.bool_()),
              pa.field("score", pa.float64()), pa.field("prompt_id", pa.string()), pa.field("scorer", pa.string()),
              pa.field("scores", raw)]
    if inp.kind == "generate":
        fields += [pa.field("seed", pa.int64()), pa.field("k", pa.int64()), pa.field("category", pa.string())]
        if inp.has_latents:
            fields += [pa.field("latent", pa.binary()), pa.field("latent_shape", pa.list_(pa.int64()))]
    else:
        fields += [pa.field("source_row", pa.int64()), pa.field("column", pa.string())]
    return pa.schema(fields)


def unpaired_rows(cfg, inp, units, start: int, table, combined, labels, scorer_label: str) -> list[dict[str, Any]]:
    """The unpaired rows of one shard of units: every scored image, in unit then slot order."""
    recs = [(unit, start + n, r) for n, unit in enumerate(units) for r in table.get(start + n, []) if r.raw is not None]
    latents = ["latent", "latent_shape"] if inp.kind == "generate" and inp.has_latents else []
    fetched = {}
    for row in sorted({r.row for _, _, r in recs}):  # one take per source row: all its image columns
        columns = sorted({r.column for _, _, r in recs if r.row == row}) + latents
        fetched[row] = inp.rows.take([row], columns)[0]
    rows = []
    for unit, u, r in recs:
        src = fetched[r.row]
        row = {"caption": unit.prompt, "jpg": src[r.column], "desirable": labels[(u, r.slot)],
               "score": combined[(u, r.slot)], "prompt_id": unit.prompt_id, "scorer": scorer_label,
               "scores": dict(zip(cfg.scorer, r.raw))}
        if inp.kind == "generate":
            row.update(seed=unit.meta["seed"][r.slot], k=unit.meta["k"][r.slot], category=unit.meta["category"])
            row.update({c: src[c] for c in latents})
        else:
            row.update(source_row=r.row, column=r.column)
        rows.append(row)
    return rows


def unpaired_counts(labels: dict[tuple[int, int], bool]) -> dict[str, int]:
    """The summary's counts of an unpaired output."""
    good = sum(labels.values())
    return {"images_desirable": good, "images_undesirable": len(labels) - good}
