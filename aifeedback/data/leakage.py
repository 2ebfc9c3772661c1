"""Leakage between a training set and a test set (`aif inspect DATASET --against TEST`): the prompts they share
(exactly, and once normalised: case folded, whitespace collapsed) and the images they share (byte-identical: the
SHA-256 of the stored bytes), with counts and examples. Published derived splits have been reported to leak, and a
scorer or a tuned model measured on pairs it was trained on looks better than it is.

Both sets are read through the one pair reader (any layout aifeedback.data.sources reads); every image of both is
read once (hashing only, nothing decoded), so the check costs one pass over the bytes of both sets.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

SIDES = ("jpg_0", "jpg_1")


def normalise(prompt: Any) -> str:
    """A prompt compared without case and with runs of whitespace as one space (leading/trailing dropped)."""
    return re.sub(r"\s+", " ", str(prompt)).strip().casefold()


def image_hash(image: Any) -> str | None:
    """SHA-256 of an image's stored bytes (None: no image)."""
    return hashlib.sha256(bytes(image)).hexdigest() if image else None


@dataclass
class Index:
    """A test set's prompts and image hashes, each with the first row holding it."""

    rows: int = 0
    exact: dict[str, int] = field(default_factory=dict)
    normal: dict[str, int] = field(default_factory=dict)
    images: dict[str, tuple[int, str]] = field(default_factory=dict)  # hash -> (row, side)


def index(rows: Iterator[dict[str, Any]]) -> Index:
    """The prompts and image hashes of a set's rows (caption, jpg_0, jpg_1)."""
    ix = Index()
    for n, r in enumerate(rows):
        ix.rows += 1
        ix.exact.setdefault(str(r["caption"]), n)
        ix.normal.setdefault(normalise(r["caption"]), n)
        for side in SIDES:
            h = image_hash(r.get(side))
            if h is not None:
                ix.images.setdefault(h, (n, side))
    return ix


def overlap(rows: Iterator[dict[str, Any]], test: Index, label: str, examples: int = 5) -> dict[str, Any]:
    """How the inspected set's rows overlap the indexed test set: per kind (prompts_exact, prompts_normalised,
    images) the rows that share one, the distinct shared values, and up to `examples` examples."""
    kinds = {k: {"rows": 0, "distinct": set(), "examples": []} for k in ("prompts_exact", "prompts_normalised",
                                                                           "images")}
    total = 0

    def hit(kind: str, value: str, example: dict[str, Any]) -> None:
        k = kinds[kind]
        k["rows"] += 1
        if value not in k["distinct"] and len(k["examples"]) < examples:
            k["examples"].append(example)
        k["distinct"].add(value)

    for n, r in enumerate(rows):
        total += 1
        caption = str(r["caption"])
        if caption in test.exact:
            hit("prompts_exact", caption, {"row": n, "test_row": test.exact[caption], "prompt": caption})
        key = normalise(caption)
        if key in test.normal:
            hit("prompts_normalised", key, {"row": n, "test_row": test.normal[key], "prompt": caption})
        for side in SIDES:
            h = image_hash(r.get(side))
            if h is not None and h in test.images:
                test_row, test_side = test.images[h]
                hit("images", h, {"row": n, "side": side, "test_row": test_row, "test_side": test_side,
                                  "sha256": h})
    out: dict[str, Any] = {"against": label, "rows": total, "test_rows": test.rows}
    for name, k in kinds.items():
        out[name] = {"rows": k["rows"], "distinct": len(k["distinct"]), "examples": k["examples"]}
    out["leak"] = any(out[k]["rows"] for k in kinds)
    return out


def describe(leak: dict[str, Any]) -> str:
    """One line (two with a warning) for the terminal and the report."""
    p, q, i = leak["prompts_exact"], leak["prompts_normalised"], leak["images"]
    counts = (f"{p['rows']} of {leak['rows']} rows share a prompt with {leak['against']} ({p['distinct']} distinct; "
              f"{q['rows']} rows / {q['distinct']} once case and whitespace are ignored), {i['rows']} images are "
              f"byte-identical to one of its {leak['test_rows']} rows' images ({i['distinct']} distinct)")
    if not leak["leak"]:
        return f"  leakage check: none: {counts}"
    shown = [f"row {e['row']} = test row {e['test_row']}: {e['prompt'][:60]!r}" for e in q["examples"][:3]]
    shown += [f"row {e['row']} {e['side']} = test row {e['test_row']} {e['test_side']}" for e in i["examples"][:3]]
    return (f"  WARNING: leakage against {leak['against']}: {counts}. Drop those rows from one side before training "
            f"or measuring on it.\n  e.g. {'; '.join(shown)} (more in summary.json, leakage)")
