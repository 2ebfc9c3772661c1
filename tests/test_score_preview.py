"""OUT/preview.html of `aif score`: a self-contained page of winner | loser | margin for a seeded sample of pairs
and for the closest calls, read back with html.parser."""

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from tests.test_score import cfg, make_generate_dir, read_pairs, redness, run


class Sections(HTMLParser):
    """Per <h2> section: the images' data URIs (in order), their captions and the card notes (<p class=scores>)."""

    def __init__(self):
        super().__init__()
        self.sections, self.current, self._in = {}, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h2", "figcaption"):
            self._in = tag
        elif tag == "img" and self.current:
            self.sections[self.current]["images"].append(attrs["src"])
        elif tag == "p" and attrs.get("class") == "scores" and self.current:
            self._in = "note"
            self.sections[self.current]["notes"].append("")

    def handle_endtag(self, tag):
        if tag in ("h2", "p", "figcaption"):
            self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.current = data.split(" (")[0]
            self.sections[self.current] = {"images": [], "notes": [], "captions": []}
        elif self._in == "figcaption":
            self.sections[self.current]["captions"].append(data)
        elif self._in == "note":
            self.sections[self.current]["notes"][-1] += data


def decode(uri):
    head, b64 = uri.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(io.BytesIO(base64.b64decode(b64, validate=True))).convert("RGB")


def png_redness(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return redness(buf.getvalue())


def test_preview_shows_sampled_pairs_and_closest_calls_in_margin_order(tmp_path, capsys):
    make_generate_dir(tmp_path / "gen", latents=False)
    out = tmp_path / "pairs"
    run(cfg(input=str(tmp_path / "gen"), out=str(out), scorer="redness", pairing="all", shard_size=2, preview=5))
    assert f"check the labels in {out / 'preview.html'}" in capsys.readouterr().out
    pairs = read_pairs(out)  # 4 prompts x 6 pairs, over two shards
    assert len(pairs) == 24

    page = Sections()
    page.feed((out / "preview.html").read_text("utf-8"))
    assert list(page.sections) == ["Random sample of pairs", "Closest calls"]
    for section in page.sections.values():
        assert len(section["images"]) == 2 * 5 and len(section["notes"]) == 5  # winner + loser per card
        images = [decode(uri) for uri in section["images"]]
        assert all(im.size == (24, 16) for im in images)  # small images are embedded whole, not upscaled
        for (winner, loser), note in zip(zip(images[::2], images[1::2]), section["notes"]):
            margin = float(re.match(r"margin (\S+);", note).group(1))
            # The page's (lossless PNG) copies of the decoded images: the winner is the redder one, by the
            # stated margin (printed to 4 significant digits, so compare to that precision).
            assert png_redness(winner) - png_redness(loser) == pytest.approx(margin, rel=1e-3, abs=1e-4)

    closest = [float(re.match(r"margin (\S+);", n).group(1)) for n in page.sections["Closest calls"]["notes"]]
    smallest = sorted(r["margin"] for r in pairs)[:5]
    np.testing.assert_allclose(closest, smallest, rtol=1e-3)  # the 5 smallest margins, smallest first
    sampled = page.sections["Random sample of pairs"]["notes"]
    assert len({n.split("; ")[1] for n in sampled}) == 5  # five different pairs (shard + row)


def test_preview_is_seeded_and_can_be_turned_off(tmp_path):
    make_generate_dir(tmp_path / "gen", latents=False)
    for name in ("a", "b"):
        run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / name / "pairs"), scorer="redness", pairing="all",
                preview=3))
    pages = [(tmp_path / name / "pairs" / "preview.html").read_text() for name in ("a", "b")]
    assert pages[0] == pages[1]  # same seed, same pairs: the same page
    run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "none"), scorer="redness", preview=0))
    assert not (tmp_path / "none" / "preview.html").exists()


def test_preview_marks_kept_ties_and_shows_them_first_among_the_closest_calls(tmp_path):
    make_generate_dir(tmp_path / "gen", latents=False)
    out = tmp_path / "pairs"
    run(cfg(input=str(tmp_path / "gen"), out=str(out), scorer="redness", pairing="all", min_margin=0.3,
            keep_ties=True, preview=24))  # 24 pairs in all: every pair is in both sections
    n_ties = sum(r["label_0"] == 0.5 for r in read_pairs(out))
    assert 0 < n_ties < 24
    page = Sections()
    page.feed((out / "preview.html").read_text("utf-8"))
    winners = page.sections["Closest calls"]["captions"][::2]
    assert [c.startswith("winner (tie)") for c in winners] == [True] * n_ties + [False] * (24 - n_ties)
    assert sum(c.startswith("winner (tie)") for c in page.sections["Random sample of pairs"]["captions"]) == n_ties
