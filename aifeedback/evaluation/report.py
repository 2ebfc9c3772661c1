"""The eval report: numbers (report.json), a readable summary (report.md), and a self-contained report.html.

`build_report` turns per-image scores into win rates, intervals and the per-category breakdown (no images);
`write_report` writes the files. Images in the HTML are base64 data URIs and the chart is inline SVG, so the page
opens anywhere without a network. Best / worst examples are ranked by the margin (tuned - base) of the primary
scorer, the first one listed.
"""

from __future__ import annotations

import base64
import html
import io
import random
import string
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from aifeedback.evaluation.winrate import CI_METHOD, win_rate, win_rate_by
from aifeedback.storage.files import atomic_write_bytes, atomic_write_text, write_json

Key = tuple[str, int]  # (prompt_id, k): one base/tuned comparison


def build_report(
    rows: Sequence[dict[str, Any]], scores: dict[str, tuple[Sequence[float], Sequence[float]]], meta: dict[str, Any],
    resamples: int = 10_000, seed: int = 0, n_examples: int = 4, n_sample: int = 8,
) -> dict[str, Any]:
    """The report.json content.

    rows: one per comparison with prompt_id, prompt, category (or None), k, seed; scores: scorer -> (base scores,
    tuned scores) aligned with rows; meta: the run's settings, copied into the report.
    """
    if not rows or not scores:
        raise ValueError("a report needs at least one comparison and one scorer")
    pids = [r["prompt_id"] for r in rows]
    cats = [r.get("category") for r in rows]
    has_cats = any(c is not None for c in cats)
    per_scorer: dict[str, Any] = {}
    for name, (base, tuned) in scores.items():
        summary = win_rate(pids, base, tuned, resamples, seed).to_dict()
        if has_cats:
            by = win_rate_by([c or "(none)" for c in cats], pids, base, tuned, resamples, seed)
            summary["by_category"] = {c: w.to_dict() for c, w in by.items()}
        per_scorer[name] = summary

    primary = next(iter(scores))
    base, tuned = scores[primary]

    def example(i: int) -> dict[str, Any]:
        r = rows[i]
        return {
            "prompt_id": r["prompt_id"], "prompt": r["prompt"], "category": r.get("category"), "k": r["k"],
            "seed": r["seed"], "margin": tuned[i] - base[i],
            "scores": {n: {"base": b[i], "tuned": t[i]} for n, (b, t) in scores.items()},
        }

    by_margin = sorted(range(len(rows)), key=lambda i: (tuned[i] - base[i], pids[i], rows[i]["k"]))
    n_ex = min(n_examples, len(rows) // 2) or min(n_examples, len(rows))
    first_seed = {}
    for i, r in enumerate(rows):  # the sample shows one comparison per prompt (its first seed)
        first_seed.setdefault(r["prompt_id"], i)
    sample = random.Random(seed).sample(sorted(first_seed.values()), min(n_sample, len(first_seed)))
    return {
        **meta,
        "n_prompts": len(set(pids)),
        "n_comparisons": len(rows),
        "ci_method": CI_METHOD,
        "bootstrap_resamples": resamples,
        "primary_scorer": primary,
        "scorers": per_scorer,
        "examples": {
            "best": [example(i) for i in reversed(by_margin[-n_ex:])],
            "worst": [example(i) for i in by_margin[:n_ex]],
            "sample": [example(i) for i in sorted(sample)],
        },
    }


def example_keys(report: dict[str, Any]) -> set[Key]:
    """The comparisons whose images the report shows."""
    return {(e["prompt_id"], e["k"]) for group in report["examples"].values() for e in group}


def write_report(out: str | Path, report: dict[str, Any], images: dict[Key, tuple[bytes, bytes]],
                 thumb: int = 256) -> None:
    """Write report.json, report.md, report.html and grids/{best,worst,sample}.png into out.

    images maps each key of example_keys(report) to its (base, tuned) encoded image bytes.
    """
    out = Path(out)
    missing = example_keys(report) - set(images)
    if missing:
        raise ValueError(f"images missing for {len(missing)} example(s), e.g. {sorted(missing)[0]}")
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.html", render_html(report, images, thumb))
    for group, examples in report["examples"].items():
        pairs = [_open_pair(images[(e["prompt_id"], e["k"])]) for e in examples]
        labels = [_pair_labels(e, report["primary_scorer"]) for e in examples]
        buf = io.BytesIO()
        pair_grid(pairs, labels, cell=thumb).save(buf, format="PNG")
        atomic_write_bytes(out / "grids" / f"{group}.png", buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Markdown

def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _setup_items(report: dict[str, Any]) -> list[tuple[str, str]]:
    keys = ("base", "tuned", "tuned_weights", "prompts", "seed", "steps", "guidance", "width", "height", "scheduler",
            "dtype", "negative_prompt")
    items = [(k, str(report[k])) for k in keys if report.get(k) is not None]
    items += [("prompts x seeds", f"{report['n_prompts']} x {report['n_comparisons'] // max(report['n_prompts'], 1)}"
               f" = {report['n_comparisons']} comparisons"), ("confidence interval", report["ci_method"])]
    return items


def _scorer_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [name, _pct(s["win_rate"]), f"{_pct(s['ci_low'])} - {_pct(s['ci_high'])}", _num(s["mean_base"]),
         _num(s["mean_tuned"]), f"{s['wins']} / {s['ties']} / {s['losses']}", str(s["n"])]
        for name, s in report["scorers"].items()
    ]


SCORER_HEADER = ["scorer", "tuned win rate", "95% CI", "mean base", "mean tuned", "wins / ties / losses", "n"]


def _category_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    scorers = report["scorers"]
    if not all("by_category" in s for s in scorers.values()):
        return None
    cats = list(next(iter(scorers.values()))["by_category"])
    header = ["category", "n"] + [f"{n} win rate (95% CI)" for n in scorers]
    rows = []
    for c in cats:
        first = next(iter(scorers.values()))["by_category"][c]
        cells = [f"{_pct(w['win_rate'])} ({_pct(w['ci_low'])} - {_pct(w['ci_high'])})"
                 for w in (s["by_category"][c] for s in scorers.values())]
        rows.append([str(c), str(first["n"])] + cells)
    return header, rows


def _benchmark_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """`--benchmark geneval`: per task and overall, each model's score with its 95% interval (GenEval's 0-1)."""
    bench = report.get("benchmark", {}).get("geneval")
    if not bench:
        return None
    cell = lambda v: f"{v['score']:.3f} ({v['ci_low']:.3f} - {v['ci_high']:.3f})"  # noqa: E731
    rows = [[t, str(bench["base"]["tasks"][t]["n"])] + [cell(bench[side]["tasks"][t]) for side in ("base", "tuned")]
            for t in bench["base"]["tasks"]]
    rows.append(["overall (mean of tasks)", str(bench["base"]["n"])] +
                [cell(bench[side]["overall"]) for side in ("base", "tuned")])
    return ["GenEval task", "images", "base (95% CI)", "tuned (95% CI)"], rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: setup, the win-rate table, the per-category table, and the best / worst prompts."""
    parts = ["# aifeedback eval: tuned vs base", ""]
    parts += [f"- **{k}**: {v}" for k, v in _setup_items(report)]
    parts += ["", "## Win rates", "", "Win rate = share of comparisons (same prompt, same seed) where the tuned "
              "image scores higher; exact ties count 0.5.", "", _md_table(SCORER_HEADER, _scorer_rows(report))]
    cat = _category_table(report)
    if cat:
        parts += ["", "## By category", "", _md_table(*cat)]
    bench = _benchmark_table(report)
    if bench:
        parts += ["", "## GenEval", "", "Share of images GenEval's rules judge correct (geneval-verdict scorer); "
                  "intervals: percentile bootstrap over prompts.", "", _md_table(*bench)]
    primary = report["primary_scorer"]
    for group, title in (("best", "Largest gains"), ("worst", "Largest losses")):
        parts += ["", f"## {title} ({primary} margin, tuned - base)", "", f"Images: `grids/{group}.png`.", ""]
        parts += [f"- {_num(e['margin'])}: {e['prompt']} (seed {e['seed']})" for e in report["examples"][group]]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# HTML

def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def win_rate_chart(report: dict[str, Any]) -> str:
    """Inline SVG: one horizontal bar per scorer with its 95% interval and a dashed line at 50%."""
    scorers = report["scorers"]
    label_w, plot_w, row_h, top = 150, 420, 30, 24
    height = top + row_h * len(scorers) + 8
    x = lambda p: label_w + p * plot_w  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 70}" height="{height}" '
             f'role="img" aria-label="win rates">']
    for p in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{x(p):.1f}" y="14" font-size="11" text-anchor="middle">{int(p * 100)}%</text>')
    for i, (name, s) in enumerate(scorers.items()):
        y = top + i * row_h
        color = "#2e7d32" if s["ci_low"] > 0.5 else "#c62828" if s["ci_high"] < 0.5 else "#757575"
        parts += [
            f'<text x="{label_w - 8}" y="{y + 18}" font-size="12" text-anchor="end">{html.escape(name)}</text>',
            f'<rect x="{label_w}" y="{y + 5}" width="{s["win_rate"] * plot_w:.1f}" height="18" fill="{color}" '
            f'opacity="0.8"><title>{html.escape(name)}: {_pct(s["win_rate"])}</title></rect>',
            f'<line x1="{x(s["ci_low"]):.1f}" x2="{x(s["ci_high"]):.1f}" y1="{y + 14}" y2="{y + 14}" '
            f'stroke="black" stroke-width="1.5"/>',
            f'<text x="{x(1) + 6:.1f}" y="{y + 18}" font-size="12">{_pct(s["win_rate"])}</text>',
        ]
    parts.append(f'<line x1="{x(0.5):.1f}" x2="{x(0.5):.1f}" y1="18" y2="{height - 4}" stroke="black" '
                 f'stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def data_uri(image_bytes: bytes, thumb: int = 256) -> str:
    """An encoded image as a data URI, shrunk so its longer side is at most `thumb` px (PNG stays lossless)."""

    img = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    img.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small = max(img.size) <= 128  # tiny images: PNG (exact); real ones: JPEG keeps the page small
    img.save(buf, format="PNG" if small else "JPEG", quality=90)
    return f"data:image/{'png' if small else 'jpeg'};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pair_labels(e: dict[str, Any], primary: str) -> tuple[str, str]:
    s = e["scores"][primary]
    return f"base {_num(s['base'])}", f"tuned {_num(s['tuned'])}"


def figure_card(title: str, figures: list[tuple[bytes, str]], note: str, thumb: int = 256) -> str:
    """One card of a page: a title line, images side by side (each a thumbnail data URI with its caption) and a
    note below. title and note are HTML (escape what they quote); captions are plain text."""

    figs = "".join(f'<figure><img src="{data_uri(image, thumb)}" alt="{html.escape(cap)}">'
                   f'<figcaption>{html.escape(cap)}</figcaption></figure>' for image, cap in figures)
    return f'<div class=card><p class=prompt>{title}</p><div class=pair>{figs}</div><p class=scores>{note}</p></div>'


def _examples_html(examples: list[dict[str, Any]], images: dict[Key, tuple[bytes, bytes]], thumb: int) -> str:
    cards = []
    for e in examples:
        base, tuned = images[(e["prompt_id"], e["k"])]
        scores = "; ".join(f"{html.escape(n)} {_num(s['base'])} &rarr; "
                           f"{_num(s['tuned'])}" for n, s in e["scores"].items())
        cat = f" <span class=cat>{html.escape(str(e['category']))}</span>" if e.get("category") else ""
        cards.append(figure_card(html.escape(e["prompt"]) + cat, [(base, "base"), (tuned, "tuned")],
                                 f'seed {e["seed"]}; {scores}', thumb))
    return "<div class=cards>" + "".join(cards) + "</div>"


def render_template(name: str, **values: str) -> str:
    """templates/NAME with its $fields filled; every page gets the shared stylesheet (templates/style.css) as
    $style, so the eval report and the score preview look alike."""

    templates = resources.files("aifeedback.evaluation").joinpath("templates")
    style = templates.joinpath("style.css").read_text("utf-8")
    return string.Template(templates.joinpath(name).read_text("utf-8")).substitute(style=style, **values)


def render_html(report: dict[str, Any], images: dict[Key, tuple[bytes, bytes]], thumb: int = 256) -> str:
    """report.html from templates/report.html: tables, the SVG chart and embedded image pairs."""
    cat, bench = _category_table(report), _benchmark_table(report)
    primary = html.escape(report["primary_scorer"])
    ex = report["examples"]
    return render_template(
        "report.html",
        title=html.escape(f"aifeedback eval: {report.get('tuned', 'tuned')} vs {report.get('base', 'base')}"),
        setup=_html_table(["setting", "value"], [[k, v] for k, v in _setup_items(report)]),
        chart=win_rate_chart(report),
        scorers=_html_table(SCORER_HEADER, _scorer_rows(report)),
        categories=(("<h2>By category</h2>" + _html_table(*cat)) if cat else "")
        + (("<h2>GenEval</h2>" + _html_table(*bench)) if bench else ""),
        primary=primary,
        sample=_examples_html(ex["sample"], images, thumb),
        best=_examples_html(ex["best"], images, thumb),
        worst=_examples_html(ex["worst"], images, thumb),
    )


# ---------------------------------------------------------------------------------------------------------------
# PNG grids

def _open_pair(pair: tuple[bytes, bytes]):

    return tuple(Image.open(io.BytesIO(b)).convert("RGB") for b in pair)


def image_grid(images: list, cols: int, cell: int = 256, labels: list[str] | None = None):
    """Tile PIL images into a grid of cell x cell tiles (upscaled with nearest so tiny images stay crisp),
    each with an optional caption strip above it."""

    if not images:
        raise ValueError("no images to tile")
    strip = 16 if labels else 0
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * (cell + strip)), "white")
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        x, y = (i % cols) * cell, (i // cols) * (cell + strip)
        scale = cell / max(img.size)  # fit inside the tile, keeping the aspect ratio
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        tile = img.convert("RGB").resize(size, resample)
        grid.paste(tile, (x + (cell - size[0]) // 2, y + strip + (cell - size[1]) // 2))
        if labels:
            draw.text((x + 3, y + 2), labels[i], fill="black")
    return grid


def pair_grid(pairs: list[tuple], labels: list[tuple[str, str]], cell: int = 256):
    """Rows of (base, tuned) images side by side."""
    return image_grid([im for p in pairs for im in p], cols=2, cell=cell, labels=[s for lab in labels for s in lab])
