"""`aif inspect DATASET`: what a preference dataset holds, in seconds and before any model loads.

It opens DATASET with the one pair reader (aifeedback.data.sources: the source that detects it, or --columns),
counts its rows with the one label rule (pairs with a clear winner, ties, unlabelled and bad rows, which side
wins), and writes OUT/inspect.html (a seeded sample of pairs as training will see them, built from the eval
report's cards and stylesheet) and OUT/summary.json. Only label columns are read for the counts; images are read
for the shown examples only. A local folder is read offline; a hub id and WebDataset shards are streamed (no
download or cache copy of the whole set).
"""

from __future__ import annotations

import html
import random
import time
from itertools import islice
from pathlib import Path
from typing import Any

from aifeedback.config import identity_dict, to_dict
from aifeedback.console import finish
from aifeedback.data import leakage
from aifeedback.data.images import decode_image
from aifeedback.data.labels import LABEL_COLUMNS, PAIR_COLUMNS, winner_of
from aifeedback.data.mapping import parse_columns
from aifeedback.data.pairs import PairStats
from aifeedback.data.sources import PairTable, open_pairs, source_for
from aifeedback.errors import DataError
from aifeedback.evaluation.report import figure_card, render_template
from aifeedback.stages.inspect_config import InspectConfig
from aifeedback.storage.files import atomic_write_text, write_json
from aifeedback.storage.manifest import finish_output, prepare_output

PAGE = "inspect.html"
SUMMARY = "summary.json"


def run(cfg: InspectConfig) -> dict[str, Any]:
    """Count, sample and write; returns the summary (also OUT/summary.json)."""
    start = time.perf_counter()
    out = Path(cfg.out)
    table = open_pairs(cfg.dataset, cfg.split, labels=False, streaming=_streams(cfg.dataset, cfg.columns),
                       columns=parse_columns(cfg.columns),
                       pairing=cfg.ranked_pairs)  # first: a dataset no source reads leaves no --out behind
    test = _open_against(cfg)
    manifest = prepare_output(out, "inspect", to_dict(cfg), identity_dict(cfg), cfg.overwrite)
    have = table.columns
    labelled = have is None or all(c in have for c in LABEL_COLUMNS)
    stats, winners = count_labels(table, cfg.limit) if labelled else (PairStats(), [])
    chosen = sorted(random.Random(cfg.seed).sample(winners, min(cfg.examples, len(winners))))
    examples = read_examples(table, chosen)
    summary = {
        "dataset": cfg.dataset, "split": cfg.split, "source": table.source, "label": table.label,
        "columns": have, "labelled": labelled, "rows": stats.rows, "pairs": stats.kept, "ties": stats.ties,
        "unlabelled": stats.unlabelled, "bad_rows": stats.bad_labels, "bad_row_examples": stats.bad_label_examples,
        "label_balance": {"jpg_0": sum(w == 0 for _, w in winners), "jpg_1": sum(w == 1 for _, w in winners)},
        "examples": len(examples), "unreadable_example_images": sum(e["unreadable"] for e in examples),
        "limit": cfg.limit,
    }
    if test is not None:
        summary["leakage"] = check_leakage(table, test, cfg.against, cfg.limit)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    write_json(out / SUMMARY, summary)
    atomic_write_text(out / PAGE, render_page(summary, examples, cfg.thumb))
    finish_output(out, manifest, rows=stats.rows, pairs=stats.kept, ties=stats.ties, bad_rows=stats.bad_labels)
    print(describe(summary))
    if cfg.fail_on_leak and summary.get("leakage", {}).get("leak"):  # the report is written: the user reads it
        raise DataError(f"--fail-on-leak: {leakage.describe(summary['leakage']).strip()} (report: {out / SUMMARY})")
    finish("inspect", out, f"{stats.kept} pairs of {stats.rows} rows, {len(examples)} shown in {PAGE}",
           f"aif train --dataset {cfg.dataset}" + (f" --split {cfg.split}" if cfg.split else ""))
    return summary


def _open_against(cfg: InspectConfig) -> PairTable | None:
    """The --against test set, opened (and its layout checked) before any output is written."""
    if not cfg.against:
        return None
    return open_pairs(cfg.against, cfg.against_split, labels=False, streaming=_streams(cfg.against))


def _streams(target: str, columns: list[str] | None = None) -> bool:
    """Whether inspect streams `target`: a hub id, and local WebDataset shards (read in one pass, never copied into
    the `datasets` cache); other local data is read in place."""
    return not Path(target).expanduser().exists() or (not columns and source_for(target).name == "pickapic-wds")


def check_leakage(table: PairTable, test: PairTable, label: str, limit: int | None) -> dict[str, Any]:
    """Prompts and images the inspected table (its first --limit rows) shares with the test table."""
    columns = ["caption", "jpg_0", "jpg_1"]
    rows = table.iter_rows(columns)
    return leakage.overlap(islice(rows, limit) if limit else rows, leakage.index(test.iter_rows(columns)), label)


def count_labels(table: PairTable, limit: int | None) -> tuple[PairStats, list[tuple[int, int]]]:
    """Read the label columns only: the counts and [(row, winner)] of the rows with a clear winner."""
    stats = PairStats()
    winners: list[tuple[int, int]] = []
    for row, r in enumerate(table.iter_rows(list(LABEL_COLUMNS) + ["has_label"])):
        if limit is not None and row >= limit:
            break
        stats.rows += 1
        w = winner_of(r.get("label_0"), r.get("label_1"), r.get("has_label"))
        if w in (0, 1):
            winners.append((row, w))
        else:
            stats.count(w, row, r.get("label_0"), r.get("label_1"))
    stats.kept = len(winners)
    return stats, winners


def read_examples(table: PairTable, chosen: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The chosen rows' caption and images (local Parquet: those rows only; otherwise read up to the last one)."""
    if not chosen:
        return []
    rows = [r for r, _ in chosen]
    columns = list(PAIR_COLUMNS + LABEL_COLUMNS)
    if table.files and table.files[0].suffix == ".parquet":
        found = table.rows().take(rows, columns)
    else:
        wanted, found = set(rows), []
        for i, r in enumerate(table.iter_rows(columns)):
            if i in wanted:
                found.append(r)
            if i >= rows[-1]:
                break
    out = []
    for (row, winner), r in zip(chosen, found, strict=True):
        readable = [_readable(r[c]) for c in ("jpg_0", "jpg_1")]
        out.append(dict(r, row=row, winner=winner, unreadable=readable.count(False), readable=readable))
    return out


def _readable(image: Any) -> bool:
    try:
        decode_image(image)
    except ValueError:
        return False
    return True


def describe(s: dict[str, Any]) -> str:
    """The summary as a few lines for the terminal."""
    total = s["label_balance"]["jpg_0"] + s["label_balance"]["jpg_1"]
    share = f"{s['label_balance']['jpg_0'] / total:.0%}" if total else "n/a"
    lines = [f"{s['label']}: read by the '{s['source']}' source; columns: {', '.join(s['columns'] or ['(streamed)'])}",
             f"  {s['rows']} rows{' (--limit)' if s['limit'] else ''}: {s['pairs']} pairs with a clear winner, "
             f"{s['ties']} ties, {s['unlabelled']} unlabelled, {s['bad_rows']} bad rows; jpg_0 preferred in {share}"]
    if not s["labelled"]:
        lines.append("  no label_0/label_1: only `aif score` can use it (it relabels pairs); for training map the "
                     "labels with --columns ...,label=COLUMN")
    if "leakage" in s:
        lines.append(leakage.describe(s["leakage"]))
    if s["unreadable_example_images"]:
        lines.append(f"  {s['unreadable_example_images']} unreadable image(s) among the {s['examples']} examples")
    return "\n".join(lines)


def render_page(s: dict[str, Any], examples: list[dict[str, Any]], thumb: int) -> str:
    """inspect.html: the counts and the example pairs (the preferred image on the left), on the shared template."""
    cards = []
    for e in examples:
        win, lose = e["winner"], 1 - e["winner"]
        figures = [(e[f"jpg_{k}"], f"{'preferred' if k == win else 'other'} (jpg_{k})") for k in (win, lose)
                   if e["readable"][k]]
        note = f"row {e['row']}; label_0={e['label_0']:g}, label_1={e['label_1']:g}"
        if e["unreadable"]:
            note += f"; {e['unreadable']} unreadable image(s) not shown"
        cards.append(figure_card(html.escape(str(e["caption"])), figures, html.escape(note), thumb))
    return render_template(PAGE, title=html.escape(f"aifeedback inspect: {s['label']}"),
                           counts=html.escape(describe(s)).replace("\n", "<br>"),
                           examples="<div class=cards>" + "".join(cards) + "</div>")
