"""Phase 2 of `aif score`: from per-image scores to labelled pairs in the Pick-a-Pic layout, and the summary.

Everything here is a deterministic function of the per-image score shards and the config, so any process can
write any output shard, and rank 0 can count what every shard kept or dropped without reading them back.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aifeedback.scoring.pairing import combine, distribution, human_accuracy, label, order_agreement, select_pairs

# Columns of the input that are never passed through (replaced by ours or re-derived).
_NOT_PASSED = {"caption", "jpg_0", "jpg_1", "label_0", "label_1"}
_MAX_LISTED = 1000  # failed images / bad rows listed by location in summary.json (all are counted)


@dataclass
class Record:
    """One image's phase-1 result."""

    slot: int
    row: int
    column: str
    prompt_id: str
    raw: list[float] | None
    error: str | None
    wins: list[float | None] | None = None  # a pairwise judge's P(better than slot j) (scoring/pairwise.py)


def scores_schema(pairwise: bool = False):
    """Arrow schema of the per-image score shards (a pairwise judge's also hold each image's `wins`)."""

    return pa.schema([
        ("unit", pa.int64()), ("slot", pa.int64()), ("row", pa.int64()), ("column", pa.string()),
        ("prompt_id", pa.string()), ("raw", pa.list_(pa.float64())), ("error", pa.string()),
        *([("wins", pa.list_(pa.float64()))] if pairwise else []),
    ])


def load_scores(files: list[Path], n_scorers: int) -> dict[int, list[Record]]:
    """unit index -> its images' records, by slot, from the per-image score files."""

    table: dict[int, list[Record]] = defaultdict(list)
    for f in files:
        for r in pq.read_table(f).to_pylist():
            if r["raw"] is not None and len(r["raw"]) != n_scorers:
                raise RuntimeError(f"{f}: {len(r['raw'])} scores per image, expected {n_scorers}")
            table[r["unit"]].append(Record(r["slot"], r["row"], r["column"], r["prompt_id"], r["raw"], r["error"],
                                           r.get("wins")))
    for recs in table.values():
        recs.sort(key=lambda r: r.slot)
    return dict(table)


def combined_scores(table: dict[int, list[Record]], weights: list[float], how: str) -> dict[tuple[int, int], float]:
    """(unit, slot) -> ensemble score, normalising each scorer over all scored images of the same prompt."""
    groups: dict[str, list[tuple[int, Record]]] = defaultdict(list)
    for u in sorted(table):
        for r in table[u]:
            if r.raw is not None:
                groups[r.prompt_id].append((u, r))
    out: dict[tuple[int, int], float] = {}
    for members in groups.values():
        for (u, r), s in zip(members, combine([r.raw for _, r in members], weights, how)):
            out[(u, r.slot)] = s
    return out


@dataclass
class Pair:
    a: Record
    b: Record
    score_a: float
    score_b: float
    labels: tuple[float, float] | None  # None: a tie that is dropped


def unit_pairs(cfg, kind: str, u: int, recs: list[Record], combined) -> tuple[list[Pair], str | None]:
    """The pairs one unit yields and, when it yields none, why ("too_few_images")."""
    valid = [r for r in recs if r.raw is not None]
    if len(valid) < 2 or (kind == "pairs" and len(valid) != 2):
        return [], "too_few_images"
    scores = [combined[(u, r.slot)] for r in valid]
    idx = [(0, 1)] if kind == "pairs" else select_pairs(scores, cfg.pairing, valid[0].prompt_id, cfg.seed)
    pairs = []
    for i, j in idx:
        a, b = valid[i], valid[j]
        # a pairwise judge's pair is its direct verdict on the two: P(a better), P(b better) = 1 - that
        s_a, s_b = (a.wins[b.slot], b.wins[a.slot]) if a.wins is not None else (scores[i], scores[j])
        lab = label(s_a, s_b, cfg.min_margin)
        if lab is None and cfg.keep_ties:
            lab = (0.5, 0.5)
        pairs.append(Pair(a, b, s_a, s_b, lab))
    return pairs, None


def _passthrough_fields(inp) -> list:
    if inp.kind != "pairs":
        return []
    ours = {f.name for f in _core_fields([])} | _NOT_PASSED | {"source_row", "human_label_0", "human_label_1"}
    return [f for f in inp.rows.schema if f.name not in ours]


def _core_fields(specs: list[str]) -> list:

    raw = pa.struct([(s, pa.float64()) for s in specs]) if specs else pa.struct([("_", pa.float64())])
    return [
        pa.field("caption", pa.string()), pa.field("jpg_0", pa.binary()), pa.field("jpg_1", pa.binary()),
        pa.field("label_0", pa.float64()), pa.field("label_1", pa.float64()), pa.field("prompt_id", pa.string()),
        pa.field("score_0", pa.float64()), pa.field("score_1", pa.float64()), pa.field("margin", pa.float64()),
        pa.field("scorer", pa.string()), pa.field("seed_0", pa.int64()), pa.field("seed_1", pa.int64()),
        pa.field("scores_0", raw), pa.field("scores_1", raw),
    ]


def output_schema(cfg, inp):
    """The Pick-a-Pic layout plus our columns; fixed per job so every shard (even an empty one) matches."""

    fields = _core_fields(cfg.scorer)
    if inp.kind == "generate":
        fields += [pa.field("k_0", pa.int64()), pa.field("k_1", pa.int64()), pa.field("category", pa.string())]
        if inp.has_latents:
            fields += [pa.field("latent_0", pa.binary()), pa.field("latent_1", pa.binary()),
                       pa.field("latent_shape", pa.list_(pa.int64()))]
    else:
        fields += [pa.field("source_row", pa.int64())]
        if inp.has_labels:
            fields += [pa.field("human_label_0", pa.float64()), pa.field("human_label_1", pa.float64())]
        fields += _passthrough_fields(inp)
    return pa.schema(fields)


def shard_rows(cfg, inp, units, start: int, table, combined, scorer_label: str) -> list[dict[str, Any]]:
    """The output rows of one shard of units (image bytes and latents copied from the input)."""
    decided = [(unit, unit_pairs(cfg, inp.kind, start + n, table.get(start + n, []), combined)[0])
               for n, unit in enumerate(units)]
    if inp.kind == "generate":
        cols = ["image"] + (["latent", "latent_shape"] if inp.has_latents else [])
    else:
        labels = ["label_0", "label_1"] if inp.has_labels else []
        cols = ["jpg_0", "jpg_1"] + labels + [f.name for f in _passthrough_fields(inp)]
    needed = sorted({r.row for _, pairs in decided for p in pairs if p.labels for r in (p.a, p.b)})
    fetched = dict(zip(needed, inp.rows.take(needed, cols))) if needed else {}
    rows = []
    for unit, pairs in decided:
        for p in pairs:
            if p.labels is None:
                continue
            fa, fb = fetched[p.a.row], fetched[p.b.row]
            row = {
                "caption": unit.prompt, "jpg_0": fa[p.a.column], "jpg_1": fb[p.b.column],
                "label_0": p.labels[0], "label_1": p.labels[1], "prompt_id": unit.prompt_id,
                "score_0": p.score_a, "score_1": p.score_b, "margin": abs(p.score_a - p.score_b),
                "scorer": scorer_label, "seed_0": None, "seed_1": None,
                "scores_0": dict(zip(cfg.scorer, p.a.raw)), "scores_1": dict(zip(cfg.scorer, p.b.raw)),
            }
            if inp.kind == "generate":
                row.update(seed_0=unit.meta["seed"][p.a.slot], seed_1=unit.meta["seed"][p.b.slot],
                           k_0=unit.meta["k"][p.a.slot], k_1=unit.meta["k"][p.b.slot], category=unit.meta["category"])
                if inp.has_latents:
                    row.update(latent_0=fa["latent"], latent_1=fb["latent"], latent_shape=fa["latent_shape"])
            else:
                row["source_row"] = p.a.row
                if inp.has_labels:
                    row.update(human_label_0=fa["label_0"], human_label_1=fa["label_1"])
                row.update({c: fa[c] for c in cols if c not in _NOT_PASSED})
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Summary

def summarize(cfg, inp, table, combined) -> dict[str, Any]:
    """Counts, distributions, inter-scorer agreement and (Pick-a-Pic input) agreement with the human labels."""
    specs = list(cfg.scorer)
    failed, raw_by_scorer, comb = [], [[] for _ in specs], []
    kept = ties_kept = ties_dropped = no_pair = 0
    winners = {"0": 0, "1": 0, "tie": 0}
    margins: list[float] = []
    within: list[tuple[int, Record, Record]] = []  # image pairs within a unit, for scorer agreement
    for u in range(len(inp.units)):
        recs = table.get(u, [])
        for r in recs:
            if r.raw is None:
                failed.append({"where": f"{inp.rows.where(r.row)} ({r.column})", "prompt_id": r.prompt_id,
                               "error": r.error})
                continue
            for s, v in enumerate(r.raw):
                raw_by_scorer[s].append(v)
            comb.append(combined[(u, r.slot)])
        valid = [r for r in recs if r.raw is not None]
        within += [(u, a, b) for i, a in enumerate(valid) for b in valid[i + 1 :]]
        pairs, why = unit_pairs(cfg, inp.kind, u, recs, combined)
        no_pair += why is not None
        for p in pairs:
            if p.labels is None:
                ties_dropped += 1
            elif p.labels == (0.5, 0.5):
                ties_kept += 1
                winners["tie"] += 1
            else:
                kept += 1
                winners["0" if p.labels[0] == 1.0 else "1"] += 1
                margins.append(abs(p.score_a - p.score_b))
    names = specs + (["ensemble"] if len(specs) > 1 else [])

    def values(u: int, r: Record, s: int) -> float:
        return r.raw[s] if s < len(specs) else combined[(u, r.slot)]

    agreement = _scorer_agreement(names, within, values)
    summary: dict[str, Any] = {
        "input": cfg.input, "kind": inp.kind, "scorer": specs, "weights": [float(w) for w in (cfg.weights or [])],
        "normalize": cfg.normalize if len(specs) > 1 else None,
        "pairing": cfg.pairing if inp.kind == "generate" else "given (relabel)",
        "min_margin": cfg.min_margin, "keep_ties": cfg.keep_ties,
        "counts": {
            "units": len(inp.units), "images_scored": len(comb), "images_failed": len(failed),
            "bad_rows": len(inp.bad_rows), "pairs": kept + ties_kept, "pairs_decisive": kept, "ties_kept": ties_kept,
            "ties_dropped": ties_dropped, "units_without_pair": no_pair,
        },
        "labels": winners,
        "margin": distribution(margins),
        "scores": {n: distribution(raw_by_scorer[s] if s < len(specs) else comb) for s, n in enumerate(names)},
        "scorer_agreement": agreement,
        "failed_images": failed[:_MAX_LISTED],
        "bad_rows": inp.bad_rows[:_MAX_LISTED],
    }
    if inp.kind == "pairs" and inp.has_labels:
        summary["human_agreement"] = _human_agreement(inp, table, combined, names, values)
    return summary


def _scorer_agreement(names: list[str], within: list, values) -> dict[str, Any]:
    """How often each two scorers order the image pairs of a unit the same way."""
    agreement = {}
    for s in range(len(names)):
        for t in range(s + 1, len(names)):
            acc, n = order_agreement([(values(u, a, s), values(u, b, s), values(u, a, t), values(u, b, t))
                                      for u, a, b in within])
            agreement[f"{names[s]} vs {names[t]}"] = {"agreement": acc, "image_pairs": n}
    return agreement


def _human_agreement(inp, table, combined, names, values) -> dict[str, Any]:
    rows = [u.images[0][0] for u in inp.units]
    take = inp.rows.take(rows, ["label_0", "label_1"]) if rows else []
    out = {}
    for s, name in enumerate(names):
        items = []
        for u, lab in enumerate(take):
            recs = [r for r in table.get(u, []) if r.raw is not None]
            if len(recs) == 2:
                items.append((lab["label_0"], lab["label_1"], values(u, recs[0], s), values(u, recs[1], s)))
        acc, n = human_accuracy(items)
        out[name] = {"accuracy": acc, "pairs": n}
    return out


def _f(v: Any, nd: int = 4) -> str:
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def format_summary(s: dict[str, Any], out: Path) -> str:
    """A short human-readable report of a summary."""
    c = s["counts"]
    lines = [
        f"aif score: {s['kind']} input {s['input']} -> {out}",
        f"  scorer {', '.join(s['scorer'])}" + (f" (ensemble, {s['normalize']})" if s["normalize"] else "")
        + f"; pairing {s['pairing']}; min margin {s['min_margin']:g}" + ("; ties kept" if s["keep_ties"] else ""),
        f"  units {c['units']}  images scored {c['images_scored']}  failed images {c['images_failed']}  "
        f"bad rows {c['bad_rows']}",
        f"  pairs kept {c['pairs']} (decisive {c['pairs_decisive']}, ties kept {c['ties_kept']})  "
        f"dropped as ties {c['ties_dropped']}  units without a pair {c['units_without_pair']}",
        f"  labels: first image wins {s['labels']['0']}, second wins {s['labels']['1']}, tie {s['labels']['tie']}; "
        f"margin median {_f(s['margin']['median'])}",
        "  scores:  name  n  mean  std  min  median  max",
    ]
    for name, d in s["scores"].items():
        stats = "  ".join(_f(d[k]) for k in ("mean", "std", "min", "median", "max"))
        lines.append(f"    {name}  {d['n']}  {stats}")
    if "images_desirable" in c:
        lines.append(f"  unpaired images: {c['images_desirable']} desirable, {c['images_undesirable']} undesirable "
                     f"(in {out / 'unpaired'})")
    for k, v in s["scorer_agreement"].items():
        lines.append(f"  agreement {k}: {_f(v['agreement'], 3)} over {v['image_pairs']} image pairs")
    for k, v in s.get("human_agreement", {}).items():
        lines.append(f"  agreement with human labels, {k}: {_f(v['accuracy'], 3)} over {v['pairs']} non-tie pairs")
    for item in s["failed_images"][:5] + s["bad_rows"][:5]:
        lines.append(f"  skipped {item['where']}: {item['error']}")
    if c["images_failed"] + c["bad_rows"] > 10:
        lines.append(f"  ... all {c['images_failed'] + c['bad_rows']} skipped items are listed in summary.json")
    return "\n".join(lines)
