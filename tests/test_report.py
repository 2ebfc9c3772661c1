"""Win-rate statistics and the report files, on synthetic scores and images (no models)."""

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from aifeedback.evaluation.report import build_report, example_keys, image_grid, write_report
from aifeedback.evaluation.winrate import bootstrap_ci, outcome, preference_accuracy, win_rate, win_rate_by


def test_outcome_counts_ties_half():
    assert (outcome(2.0, 1.0), outcome(1.0, 2.0), outcome(1.5, 1.5)) == (1.0, 0.0, 0.5)


def test_identical_scores_give_exactly_half_with_a_collapsed_interval():
    w = win_rate(["a", "a", "b"], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert (w.win_rate, w.ci_low, w.ci_high, w.ties, w.n, w.n_prompts) == (0.5, 0.5, 0.5, 3, 3, 2)


def test_win_rate_means_and_counts():
    w = win_rate(["a", "b", "c", "d"], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 0.0, 1.0])
    assert w.win_rate == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert (w.wins, w.ties, w.losses) == (2, 1, 1)
    assert (w.mean_base, w.mean_tuned) == (1.0, 1.25)
    assert w.ci_low <= w.win_rate <= w.ci_high


def test_bootstrap_resamples_whole_prompts():
    # Two prompts with 10 seeds each: one always wins, one always loses. Only the prompts are independent, so
    # the interval must span (almost) everything; treating the 20 seeds as independent would make it narrow.
    values = [1.0] * 10 + [0.0] * 10
    grouped = bootstrap_ci(values, ["a"] * 10 + ["b"] * 10)
    independent = bootstrap_ci(values)
    assert grouped == (0.0, 1.0)
    assert independent[0] > 0.25 and independent[1] < 0.75


def test_bootstrap_matches_the_binomial_interval_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = (rng.random(400) < 0.6).astype(float)
    lo, hi = bootstrap_ci(values)
    p, se = values.mean(), values.std() / np.sqrt(len(values))
    assert lo == pytest.approx(p - 1.96 * se, abs=0.01) and hi == pytest.approx(p + 1.96 * se, abs=0.01)
    assert bootstrap_ci(values) == (lo, hi)


def test_win_rate_by_category():
    by = win_rate_by(["x", "y", "x"], ["a", "b", "c"], [0, 0, 0], [1, -1, 1])
    assert list(by) == ["x", "y"] and by["x"].win_rate == 1.0 and by["y"].win_rate == 0.0 and by["x"].n == 2


def test_preference_accuracy_against_known_labels():
    acc = preference_accuracy([1, 0, 5, 2], [0, 1, 5, 3], [1.0, 1.0, 0.0, 0.0])
    assert acc.accuracy == pytest.approx((1 + 0 + 0.5 + 1) / 4) and acc.score_ties == 1 and acc.n == 4
    with pytest.raises(ValueError, match="drop ties"):
        preference_accuracy([1], [0], [0.5])


def _png(color, size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _synthetic(n_prompts=6, seeds=2):
    rng = np.random.default_rng(0)
    rows, base, tuned, images = [], [], [], {}
    for p in range(n_prompts):
        for k in range(seeds):
            rows.append({"prompt_id": f"p{p}", "prompt": f"prompt <{p}> & co", "category": "AB"[p % 2], "k": k,
                         "seed": 100 * p + k})
            b, t = rng.random(), rng.random()
            base.append(b)
            tuned.append(t)
            images[(f"p{p}", k)] = (_png((int(255 * b), 0, 0)), _png((0, int(255 * t), 0)))
    scores = {"redness": (base, tuned), "clip:tiny": ([x * 2 for x in base], [x * 2 for x in tuned])}
    return rows, scores, images


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_files(tmp_path):
    rows, scores, images = _synthetic()
    report = build_report(rows, scores, {"base": "tiny-sd15", "tuned": "run/", "prompts": "parti"}, n_examples=2,
                          n_sample=3, resamples=500)
    assert report["primary_scorer"] == "redness" and report["n_comparisons"] == 12 and report["n_prompts"] == 6
    red = report["scorers"]["redness"]
    assert {"win_rate", "ci_low", "ci_high", "mean_base", "mean_tuned", "n"} <= set(red)
    assert set(red["by_category"]) == {"A", "B"} and sum(c["n"] for c in red["by_category"].values()) == 12
    best, worst = report["examples"]["best"], report["examples"]["worst"]
    margins = [t - b for b, t in zip(*scores["redness"])]
    assert best[0]["margin"] == max(margins) and worst[0]["margin"] == min(margins)
    assert len({e["prompt_id"] for e in report["examples"]["sample"]}) == 3

    write_report(tmp_path, report, {k: images[k] for k in example_keys(report)}, thumb=64)
    assert json.loads((tmp_path / "report.json").read_text())["scorers"]["clip:tiny"]["n"] == 12
    md = (tmp_path / "report.md").read_text()
    assert "| redness |" in md and "| A |" in md

    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.tags.count("table") == 3 and "svg" in page.tags  # setup, scorers, categories; the chart
    assert "prompt <0> & co" in "".join(page.text)  # escaped in the source, intact once parsed
    assert len(page.srcs) == 2 * (3 + 2 + 2)
    for src in page.srcs:
        assert src.startswith("data:image/")  # embedded: the page needs no network
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.size == (16, 12)
    for group, n in (("best", 2), ("worst", 2), ("sample", 3)):
        grid = Image.open(tmp_path / "grids" / f"{group}.png")
        assert grid.size == (2 * 64, n * (64 + 16))


def test_report_without_categories(tmp_path):
    rows, scores, images = _synthetic(3, 1)
    for r in rows:
        r["category"] = None
    report = build_report(rows, scores, {}, resamples=100)
    assert all("by_category" not in s for s in report["scorers"].values())
    write_report(tmp_path, report, images, thumb=32)
    assert "By category" not in (tmp_path / "report.md").read_text()
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.tags.count("table") == 2


def test_write_report_refuses_missing_images(tmp_path):
    rows, scores, _ = _synthetic(2, 1)
    report = build_report(rows, scores, {}, resamples=100)
    with pytest.raises(ValueError, match="images missing"):
        write_report(tmp_path, report, {})


def test_image_grid_keeps_aspect_ratio():
    grid = image_grid([Image.new("RGB", (20, 10), "red")] * 3, cols=2, cell=40)
    assert grid.size == (80, 80)
    assert grid.getpixel((20, 5)) == (255, 255, 255) and grid.getpixel((20, 20)) == (255, 0, 0)
