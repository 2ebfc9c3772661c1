"""The report of an online loop (`aif loop`): per round, what its stages wrote, side by side, so that reward
hacking (reward up, fidelity down) or collapse (diversity down) shows as a curve.

Every number is read from a stage's own output, never recomputed differently: the samples' mean reward from the
round's `aif score` summary.json, win rate / interval / means / fidelity from its `aif eval` report.json; only the
diversity (see `evaluation.diversity`) is computed here, from the round's generate output and the eval's base/ and
tuned/ images. report.html uses templates/loop.html with the shared stylesheet and inline SVG charts.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional, Sequence

from aifeedback.evaluation.diversity import THUMB, folder_diversity
from aifeedback.evaluation.report import _html_table, render_template
from aifeedback.storage.files import atomic_write_text, read_json, write_json

DIVERSITY = (f"mean over prompts of the mean RMS pixel difference (values in [0, 1], images shrunk to <= {THUMB} px) "
             "between the prompt's images; 0 = every seed gives the same image")


def round_record(r: int, folders: dict[str, Path], scorer: str, fidelity: Optional[str]) -> dict[str, Any]:
    """One round's numbers from its stage folders (generate, score, eval)."""
    summary = read_json(folders["score"] / "summary.json")
    ev = read_json(folders["eval"] / "report.json")
    reward = ev["scorers"][scorer]
    eval_part = {k: reward[k] for k in ("n", "win_rate", "ci_low", "ci_high", "mean_base", "mean_tuned")}
    if fidelity:
        eval_part.update(fidelity_base=ev["scorers"][fidelity]["mean_base"],
                         fidelity_tuned=ev["scorers"][fidelity]["mean_tuned"])
    eval_part.update(diversity_base=folder_diversity(folders["eval"] / "base")["mean"],
                     diversity_tuned=folder_diversity(folders["eval"] / "tuned")["mean"])
    return {
        "round": r,
        "samples": {"model": read_json(folders["generate"] / "manifest.json")["config"]["model"],
                    "images": summary["counts"]["images_scored"], "pairs": summary["counts"]["pairs"],
                    "mean_reward": summary["scores"][scorer]["mean"],
                    "diversity": folder_diversity(folders["generate"])["mean"]},
        "eval": eval_part,
    }


def build_loop_report(records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """report.json: the settings (meta), the base model's eval numbers (round 1's base twins) and the rounds."""
    base = {}
    if records:
        first = records[0]["eval"]
        base = {"mean_reward": first["mean_base"], "diversity": first["diversity_base"],
                "fidelity": first.get("fidelity_base")}
    return {**meta, "diversity_measure": DIVERSITY, "base": base, "rounds": list(records)}


def write_loop_report(out: str | Path, report: dict[str, Any]) -> None:
    out = Path(out)
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.html", render_loop_html(report))


# ---------------------------------------------------------------------------------------------------------------
# HTML

Series = tuple[str, str, list[tuple[int, float, Optional[float], Optional[float]]]]  # label, colour, (x, y, lo, hi)


def line_chart(title: str, series: Sequence[Series], baseline: Optional[float] = None,
               y_range: Optional[tuple[float, float]] = None, x_label: str = "round") -> str:
    """Inline SVG: one polyline per series over the rounds (or epochs: x_label) from 1 (vertical bars: intervals),
    a dashed line at baseline."""
    w, h, left, top, bottom = 460, 220, 56, 26, 30
    pw, ph = w - left - 110, h - top - bottom
    points = [p for _, _, pts in series for p in pts]
    ys = [v for p in points for v in p[1:] if v is not None] + ([baseline] if baseline is not None else [])
    lo, hi = y_range or (min(ys, default=0.0), max(ys, default=1.0))
    hi = hi if hi > lo else lo + 1.0
    if y_range is None:  # a margin, so that no point sits on the frame
        lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    x_max = max([p[0] for p in points], default=1)
    x = lambda v: left + 16 + (v - 1) / max(x_max - 1, 1) * (pw - 32)  # noqa: E731
    y = lambda v: top + (hi - v) / (hi - lo) * ph  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="14" font-size="12" font-weight="600">{html.escape(title)}</text>']
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
    for r in range(1, x_max + 1):
        parts.append(f'<text x="{x(r):.1f}" y="{h - 10}" font-size="10" text-anchor="middle">{r}</text>')
    parts.append(f'<text x="{left + pw}" y="{h - 10}" font-size="10" text-anchor="start">{html.escape(x_label)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#999"/>')
    if baseline is not None:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(baseline):.1f}" y2="{y(baseline):.1f}" '
                     f'stroke="black" stroke-dasharray="4 3"><title>base {baseline:.4g}</title></line>')
    for i, (label, color, pts) in enumerate(series):
        coords = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v, _, _ in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for r, v, a, b in pts:
            if a is not None and b is not None:
                parts.append(f'<line x1="{x(r):.1f}" x2="{x(r):.1f}" y1="{y(a):.1f}" y2="{y(b):.1f}" '
                             f'stroke="{color}"/>')
            parts.append(f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                         f'<title>{html.escape(label)}, {html.escape(x_label)} {r}: {v:.4g}</title></circle>')
        parts.append(f'<text x="{left + pw + 8}" y="{top + 12 + 16 * i}" font-size="11" fill="{color}">'
                     f'{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _series(records: Sequence[dict[str, Any]], part: str, key: str, label: str, color: str,
            interval: bool = False) -> Series:
    pts = [(rec["round"], rec[part][key], rec[part]["ci_low"] if interval else None,
            rec[part]["ci_high"] if interval else None) for rec in records if rec[part].get(key) is not None]
    return label, color, pts


def loop_charts(report: dict[str, Any]) -> str:
    """The four charts: reward, win rate, fidelity (when measured), diversity; base values dashed."""
    recs, base = report["rounds"], report["base"]
    charts = [
        line_chart(f"reward ({report['scorer']})",
                   [_series(recs, "samples", "mean_reward", "round's samples", "#1565c0"),
                    _series(recs, "eval", "mean_tuned", "eval, tuned", "#c62828")], base.get("mean_reward")),
        line_chart("win rate vs base (95% interval)", [_series(recs, "eval", "win_rate", "tuned wins", "#2e7d32",
                                                                interval=True)], 0.5, (0.0, 1.0)),
    ]
    if base.get("fidelity") is not None:
        charts.append(line_chart(f"prompt fidelity ({report['fidelity']})",
                                 [_series(recs, "eval", "fidelity_tuned", "eval, tuned", "#6a1b9a")],
                                 base["fidelity"]))
    charts.append(line_chart("diversity (RMS pixel distance)",
                             [_series(recs, "samples", "diversity", "round's samples", "#1565c0"),
                              _series(recs, "eval", "diversity_tuned", "eval, tuned", "#ef6c00")],
                             base.get("diversity")))
    return "\n".join(charts)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def round_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["round", "samples", "pairs", "sample reward", "sample diversity", "win rate", "95% CI",
              "eval reward base -> tuned", "fidelity base -> tuned", "eval diversity base -> tuned"]
    rows = []
    for rec in report["rounds"]:
        s, e = rec["samples"], rec["eval"]
        rows.append([str(rec["round"]), str(s["images"]), str(s["pairs"]), _fmt(s["mean_reward"]),
                     _fmt(s["diversity"]), f"{100 * e['win_rate']:.1f}%",
                     f"{100 * e['ci_low']:.1f}-{100 * e['ci_high']:.1f}%",
                     f"{_fmt(e['mean_base'])} -> {_fmt(e['mean_tuned'])}",
                     f"{_fmt(e.get('fidelity_base'))} -> {_fmt(e.get('fidelity_tuned'))}",
                     f"{_fmt(e['diversity_base'])} -> {_fmt(e['diversity_tuned'])}"])
    return header, rows


def render_loop_html(report: dict[str, Any]) -> str:
    setup = [[k, str(v)] for k, v in report.items() if k not in ("rounds", "base")]
    return render_template("loop.html", title=html.escape(f"aifeedback loop: {report.get('model', '')}"),
                           setup=_html_table(["setting", "value"], setup), charts=loop_charts(report),
                           table=_html_table(*round_table(report)))
