"""`aif rl`'s report: OUT/report.json and OUT/report.html, rebuilt at the end of every run (a resumed one too)
from what the run folder holds (metrics.jsonl, one line per epoch, and the rollouts' images), so a resumed run's
report equals an uninterrupted one's. Built from the loop report's pieces (evaluation/rounds.py's line charts,
evaluation/report.py's tables, cards and image grids, the shared stylesheet).

report.json: the run's settings and one entry per epoch (its metrics.jsonl record without the timings, which
differ between runs of the same work, and `grid`: which samples the epoch's image grid shows). report.html: curves
of the reward, monitor rewards, loss, KL, clip fraction and diversity per epoch, the table, and per epoch a grid of
the first prompts' images.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

from aifeedback.evaluation.report import _html_table, figure_card, image_grid, render_template
from aifeedback.evaluation.rounds import DIVERSITY, Series, line_chart
from aifeedback.stages.rl_config import RLConfig, monitor_specs
from aifeedback.stages.rl_outputs import ROLLOUTS
from aifeedback.storage.files import atomic_write_text, write_json
from aifeedback.storage.shards import shard_path

TIMINGS = ("images_per_s", "updates_per_s")  # not in the report: they differ between runs of the same work
GRID_PROMPTS, GRID_IMAGES = 2, 6  # each epoch's grid: up to 6 images of each of the first 2 prompts
MAX_GRIDS = 24  # a long run's page shows the grids of at most this many epochs, evenly spaced, first and last kept
COLORS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f")


def build_rl_report(out: Path, cfg: RLConfig) -> dict[str, Any]:
    """report.json's content from OUT's metrics.jsonl and rollouts."""
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    epochs = []
    for line in filter(None, lines):
        record = {k: v for k, v in json.loads(line).items() if k not in TIMINGS}
        record["grid"] = [{k: r[k] for k in ("prompt", "k", "reward")} for r in grid_rows(out, record["epoch"], cfg)]
        epochs.append(record)
    settings = {k: getattr(cfg, k) for k in ("model", "algorithm", "reward", "prompts_per_epoch", "group_size",
                                             "steps", "kl_beta", "lr", "lora_rank", "seed")}
    return {**settings, "monitor": monitor_specs(cfg.monitor), "diversity_measure": DIVERSITY, "epochs": epochs}


def grid_rows(out: Path, epoch: int, cfg: RLConfig, images: bool = False) -> list[dict[str, Any]]:
    """The rollout rows an epoch's grid shows (epoch e, counted from 1, is rollout shard e - 1)."""
    import pyarrow.parquet as pq

    path = shard_path(out / ROLLOUTS, epoch - 1)
    if not path.exists():
        return []
    columns = ["prompt", "k", "reward"] + (["image"] if images else [])
    rows = pq.read_table(path, columns=columns).slice(0, GRID_PROMPTS * cfg.group_size).to_pylist()
    return [r for r in rows if r["k"] < GRID_IMAGES]


def write_rl_report(out: Path, cfg: RLConfig) -> dict[str, Any]:
    """Write OUT/report.json and OUT/report.html; returns the report."""
    report = build_rl_report(out, cfg)
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.html", render_rl_html(out, report, cfg))
    return report


def _series(epochs: list[dict[str, Any]], keys: list[str]) -> list[Series]:
    found = [k for k in keys if any(e.get(k) is not None for e in epochs)]
    return [(k, COLORS[i % len(COLORS)], [(e["epoch"], e[k], None, None) for e in epochs if e.get(k) is not None])
            for i, k in enumerate(found)]


def rl_charts(report: dict[str, Any]) -> str:
    """Line charts over the epochs: rewards (combined, each reward, each monitor), loss, KL, clip fraction,
    diversity and the share of all-equal groups; a chart with no value logged is left out."""
    epochs = report["epochs"]
    names = list(dict.fromkeys(k for e in epochs for k in e))
    groups = [("reward (combined, each reward, monitor rewards)",
               ["reward_mean"] + [k for k in names if k.startswith(("reward/", "monitor/"))]),
              ("loss", ["loss", "policy_loss"]), ("KL", ["approx_kl", "kl_loss"]),
              ("clip fraction", ["clipfrac"]), ("diversity and all-equal groups", ["diversity", "all_equal_share"])]
    charts = [line_chart(title, series, x_label="epoch") for title, keys in groups
              if (series := _series(epochs, keys))]
    return "\n".join(charts)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def epoch_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    epochs = report["epochs"]
    keys = [k for k in ("epoch", "step", "reward_mean", *[f"monitor/{m}" for m in report["monitor"]], "loss",
                        "approx_kl", "kl_loss", "clipfrac", "diversity", "all_equal_share", "ratio_dev_first")
            if any(k in e for e in epochs)]
    return keys, [[_fmt(e.get(k)) for k in keys] for e in epochs]


def epoch_grid(out: Path, epoch: int, cfg: RLConfig) -> str:
    """One epoch's card: its first prompts' images, one row per prompt, captioned with their rewards."""
    rows = grid_rows(out, epoch, cfg, images=True)
    if not rows:
        return ""
    from PIL import Image

    cols = min(cfg.group_size, GRID_IMAGES)
    grid = image_grid([Image.open(io.BytesIO(r["image"])) for r in rows], cols, cell=96,
                      labels=[f"{r['reward']:.3g}" for r in rows])
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    prompts = "; ".join(dict.fromkeys(r["prompt"] for r in rows))
    return figure_card(f"epoch {epoch}", [(buf.getvalue(), f"epoch {epoch} samples")], html.escape(prompts),
                       thumb=96 * cols)


def grid_epochs(epochs: list[int], most: int = MAX_GRIDS) -> list[int]:
    """The epochs whose grids the page shows: all of them, or `most` evenly spaced ones with the first and last."""
    if len(epochs) <= most:
        return epochs
    return [epochs[round(i * (len(epochs) - 1) / (most - 1))] for i in range(most)]


def render_rl_html(out: Path, report: dict[str, Any], cfg: RLConfig) -> str:
    setup = [[k, str(v)] for k, v in report.items() if k not in ("epochs", "diversity_measure")]
    grids = "".join(epoch_grid(out, e, cfg) for e in grid_epochs([e["epoch"] for e in report["epochs"]]))
    return render_template("rl.html", title=html.escape(f"aifeedback rl: {report['algorithm']} on {report['model']}"),
                           diversity=html.escape(report["diversity_measure"]), charts=rl_charts(report),
                           table=_html_table(*epoch_table(report)), grids=f"<div class=cards>{grids}</div>",
                           setup=_html_table(["setting", "value"], setup))
