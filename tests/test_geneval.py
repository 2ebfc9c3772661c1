"""GenEval rules: every verdict and reward equal to an independent re-derivation of the upstream steps, on synthetic
detections covering each task and the edge cases, plus hand-computed examples."""

import numpy as np
import pytest

from aifeedback.errors import AifError
from aifeedback.evaluation import geneval as G
from aifeedback.evaluation.geneval import Detection, Rules
from aifeedback.resources import resource_path

# ---------------------------------------------------------------------------------------------------------------
# The upstream steps (djghosh13/geneval evaluation/evaluate_images.py, `evaluate_image` + `evaluate`, and
# yifan123/reward-server reward_server/gen_eval.py `evaluate_reward`) re-derived on upstream's own data layout:
# per class an (N, 5) float array [x1, y1, x2, y2, score], numpy argsort ordering, numpy position arithmetic.
# None of it calls the project's module; colours come from a {box-row: colour} table in place of CLIP.

UPSTREAM = Rules()


def ref_filter(arrays, tag, thr=0.3, count_thr=0.9, max_objects=16, max_overlap=1.0):
    cut = count_thr if tag == "counting" else thr
    out = {}
    for name, arr in arrays.items():
        idx = np.argsort(arr[:, 4])[::-1]
        idx = idx[arr[idx, 4] > cut]
        idx = list(idx[:max_objects])
        rows = []
        while idx:
            top = idx.pop(0)
            rows.append(arr[top])
            if max_overlap != 1:
                idx = [j for j in idx if ref_iou(arr[top], arr[j]) < max_overlap]
        if rows:
            out[name] = rows
    return out


def ref_iou(a, b):
    def area(bx):
        return max(bx[2] - bx[0] + 1, 0) * max(bx[3] - bx[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0


def ref_relations(a, b, margin=0.1):
    boxes = np.array([a, b])[:, :4].reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=-2)
    dims = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    off = centre_a - centre_b
    rev = np.maximum(np.abs(off) - margin * (dims[0] + dims[1]), 0) * np.sign(off)
    if np.all(np.abs(rev) < 1e-3):
        return set()
    dx, dy = rev / np.linalg.norm(off)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def ref_pairs_ok(objs, targets, rel, margin):
    return all(rel in ref_relations(o, t, margin) for o in objs for t in targets)


def ref_evaluate(objects, meta, colour_of, margin=0.1):
    correct, groups = True, []
    for req in meta.get("include", []):
        found = objects.get(req["class"], [])[: req["count"]]
        ok = len(found) >= req["count"]
        if ok and "color" in req:
            ok = [colour_of[tuple(o)] for o in found].count(req["color"]) >= req["count"]
        if ok and "position" in req:
            rel, g = req["position"]
            ok = groups[g] is not None and ref_pairs_ok(found, groups[g], rel, margin)
        groups.append(found if ok else None)
        correct &= ok
    for req in meta.get("exclude", []):
        if len(objects.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def ref_reward(objects, meta, colour_of, margin=0.1):
    credits, groups = [], []
    for req in meta.get("include", []):
        n_want = req["count"]
        found = objects.get(req["class"], [])
        credits.append(1 - abs(n_want - len(found)) / n_want)
        ok = len(found) == n_want
        if not ok:
            if "color" in req or "position" in req:
                credits.append(0.0)
        else:
            if "color" in req:
                hits = [colour_of[tuple(o)] for o in found].count(req["color"])
                credits.append(1 - abs(n_want - hits) / n_want)
                ok = hits == n_want
            if "position" in req and ok:
                rel, g = req["position"]
                if groups[g] is None:
                    ok = False
                    credits.append(0.0)
                else:
                    if not ref_pairs_ok(found, groups[g], rel, margin):
                        ok = False
                        credits.append(0.0)
                    credits.append(1.0)
        groups.append(found if ok else None)
    return sum(credits) / len(credits) if credits else 0


# ---------------------------------------------------------------------------------------------------------------

def as_detections(arrays, colour_of):
    return {name: [Detection(tuple(map(float, r[:4])), float(r[4]), color=colour_of.get(tuple(r))) for r in arr]
            for name, arr in arrays.items()}


def both(arrays, colour_of, meta, rules=UPSTREAM):
    """(project verdict, project reward), (reference verdict, reference reward) for one image."""
    kept = G.keep(as_detections(arrays, colour_of), meta["tag"], rules)
    ours = (G.verdict(kept, meta, rules=rules).correct, G.partial_credit(kept, meta, rules=rules))
    ref_kept = ref_filter(arrays, meta["tag"], rules.threshold, rules.counting_threshold, rules.max_objects,
                          rules.max_overlap)
    ref = (ref_evaluate(ref_kept, meta, colour_of, rules.position_margin),
           ref_reward(ref_kept, meta, colour_of, rules.position_margin))
    return ours, ref


# one spec per task, in upstream's metadata format
SPECS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
     "prompt": "a photo of a dog and a cat"},
    {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}],
     "prompt": "a photo of three dogs"},
    {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
     "prompt": "a photo of two cats"},
    {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"},
    {"tag": "position", "include": [{"class": "cat", "count": 1},
                                    {"class": "dog", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a dog left of a cat"},
    {"tag": "position", "include": [{"class": "dog", "count": 1},
                                    {"class": "cat", "count": 1, "position": ["below", 0]}],
     "prompt": "a photo of a cat below a dog"},
    {"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"},
                                      {"class": "cat", "count": 1, "color": "blue"}],
     "prompt": "a photo of a red dog and a blue cat"},
]


def random_image(rng, classes=("dog", "cat", "car")):
    """Random detections: 0-20 per class, scores often near the thresholds, some exact ties, random colours."""
    arrays, colour_of = {}, {}
    for name in classes:
        n = int(rng.choice([0, 1, 1, 2, 3, 4, 5, 20]))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(5, 200, (n, 2))
        scores = rng.choice([0.3, 0.9, 0.2, 0.5, 0.95, 0.99], n) if rng.random() < 0.5 else rng.uniform(0, 1, n)
        arr = np.concatenate([xy, xy + wh, scores[:, None]], axis=1)
        if n:
            arrays[name] = arr
        for row in arr:
            colour_of[tuple(row)] = str(rng.choice(["red", "blue", "green"]))
    return arrays, colour_of


@pytest.mark.parametrize("rules", [Rules(), Rules(max_overlap=0.3)], ids=["upstream", "nms0.3"])
def test_random_detections_equal_reference(rules):
    rng = np.random.default_rng(0)
    seen = {"ok": 0, "bad": 0, "partial": 0}
    for i in range(1500):
        meta = SPECS[i % len(SPECS)]
        arrays, colour_of = random_image(rng)
        ours, ref = both(arrays, colour_of, meta, rules)
        assert ours[0] == ref[0], (meta, arrays)
        assert ours[1] == pytest.approx(ref[1], abs=1e-12), (meta, arrays)
        seen["ok" if ours[0] else "bad"] += 1
        seen["partial"] += 0 < ours[1] < 1
    assert min(seen.values()) > 50, seen  # the sample exercises both verdicts and partial credit


def image(**classes):
    """image(dog=[(x1, y1, x2, y2, score, colour), ...]) -> (arrays, colour_of)."""
    arrays, colour_of = {}, {}
    for name, rows in classes.items():
        arrays[name] = np.array([r[:5] for r in rows], dtype=np.float64)
        colour_of.update((tuple(row), r[5]) for row, r in zip(arrays[name], rows))
    return arrays, colour_of


SINGLE, TWO, COUNT3, COUNT2, RED, LEFT, BELOW, ATTR = SPECS


# (name, spec, detections, expected verdict, expected reward): hand-computed; each also checked against the reference
CASES = [
    ("no detection", SINGLE, image(), False, 0.0),
    ("score exactly at 0.3 is dropped", SINGLE, image(dog=[(0, 0, 10, 10, 0.3, "red")]), False, 0.0),
    ("score just above 0.3", SINGLE, image(dog=[(0, 0, 10, 10, 0.3001, "red")]), True, 1.0),
    ("counting: exactly at 0.9 dropped", COUNT2, image(cat=[(0, 0, 9, 9, 0.9, "red"), (20, 0, 29, 9, 0.95, "red")]),
     False, 0.5),
    ("counting: two above 0.9", COUNT2, image(cat=[(0, 0, 9, 9, 0.91, "red"), (20, 0, 29, 9, 0.95, "red")]),
     True, 1.0),
    # 3 wanted, 4 found: include holds (>= 3) but exclude (>= 4) fails; reward 1 - 1/3
    ("counting: one too many", COUNT3, image(dog=[(i * 20, 0, i * 20 + 9, 9, 0.99, "red") for i in range(4)]),
     False, 2 / 3),
    # 20 confident dogs: 16 kept; exclude fails; reward 1 - |3 - 16| / 3 = -10/3 (no clamp, as the reward server)
    (">16 objects", COUNT3, image(dog=[(i * 20, 0, i * 20 + 9, 9, 0.99, "red") for i in range(20)]), False, -10 / 3),
    # single object: a second dog makes the verdict no worse (>= 1) but the reward 1 - 1/1 = 0
    ("two dogs for one", SINGLE, image(dog=[(0, 0, 9, 9, 0.5, "red"), (0, 0, 9, 9, 0.6, "red")]), True, 0.0),
    ("two_object: cat missing", TWO, image(dog=[(0, 0, 9, 9, 0.5, "red")]), False, 0.5),
    ("colour right", RED, image(dog=[(0, 0, 9, 9, 0.5, "red")]), True, 1.0),
    ("colour wrong", RED, image(dog=[(0, 0, 9, 9, 0.5, "blue")]), False, 0.5),
    # the most confident dog decides the colour for the verdict; the reward wants exactly one dog: [0 count, 0]
    ("colour of the most confident", RED, image(dog=[(0, 0, 9, 9, 0.5, "blue"), (50, 0, 59, 9, 0.8, "red")]),
     True, 0.0),
    # dog centre x 5, cat centre 45; margin 0.1 x (10 + 10) = 2 -> dx = -38/40 < -0.5: left of
    ("left of", LEFT, image(cat=[(40, 0, 50, 10, 0.5, "red")], dog=[(0, 0, 10, 10, 0.5, "red")]), True, 1.0),
    # the dog is right of the cat: clause credits [1], [1, 0, 1] -> 3/4 (the server's 0 and 1 for a failed position)
    ("right, not left", LEFT, image(cat=[(0, 0, 10, 10, 0.5, "red")], dog=[(40, 0, 50, 10, 0.5, "red")]), False, 0.75),
    # centres 2 apart, margin 2: the shrunk offset is 0 -> no relation at all
    ("tie within the margin", LEFT, image(cat=[(2, 0, 12, 10, 0.5, "red")], dog=[(0, 0, 10, 10, 0.5, "red")]),
     False, 0.75),
    # centres 2.5 apart, margin 2 -> dx = -0.5 / 2.5 = -0.2, not below -0.5: not "left of" either
    ("just past the margin", LEFT, image(cat=[(2.5, 0, 12.5, 10, 0.5, "red")], dog=[(0, 0, 10, 10, 0.5, "red")]),
     False, 0.75),
    # diagonal: offset (-40, -40), shrunk (-38, -38) / 56.57 = -0.67 each: left of AND above
    ("diagonal counts for both", LEFT, image(cat=[(40, 40, 50, 50, 0.5, "red")], dog=[(0, 0, 10, 10, 0.5, "red")]),
     True, 1.0),
    # cat below dog (y grows downwards)
    ("below", BELOW, image(dog=[(0, 0, 10, 10, 0.5, "red")], cat=[(0, 40, 10, 50, 0.5, "red")]), True, 1.0),
    # dog clause: credit 1 - 1 = 0 (no colour/position, no extra 0); cat clause: 1, then 0 for the missing target
    ("no target for the position", BELOW, image(cat=[(0, 40, 10, 50, 0.5, "red")]), False, 1 / 3),
    ("colour_attr both", ATTR, image(dog=[(0, 0, 9, 9, 0.5, "red")], cat=[(50, 0, 59, 9, 0.5, "blue")]), True, 1.0),
    ("colour_attr one wrong", ATTR, image(dog=[(0, 0, 9, 9, 0.5, "red")], cat=[(50, 0, 59, 9, 0.5, "red")]),
     False, 0.75),
]


@pytest.mark.parametrize("name,spec,img,correct,reward", CASES, ids=[c[0] for c in CASES])
def test_hand_computed_cases(name, spec, img, correct, reward):
    ours, ref = both(*img, spec)
    assert ours == (correct, pytest.approx(reward, abs=1e-12))
    assert ref == (correct, pytest.approx(reward, abs=1e-12))


def test_overlapping_boxes_kept_by_default_and_suppressed_with_max_overlap():
    # two dogs: IoU of (0,0,9,9) and (1,0,10,9) = 90 / 110 = 0.818 (pixel-inclusive areas of 100 each)
    arrays, colour_of = image(dog=[(0, 0, 9, 9, 0.95, "red"), (1, 0, 10, 9, 0.96, "red")])
    assert G.iou((0, 0, 9, 9), (1, 0, 10, 9)) == pytest.approx(90 / 110)
    dets = as_detections(arrays, colour_of)
    assert len(G.keep(dets, "counting")["dog"]) == 2  # upstream default max_overlap=1.0: no suppression
    assert len(G.keep(dets, "counting", Rules(max_overlap=0.8))["dog"]) == 1
    assert len(G.keep(dets, "counting", Rules(max_overlap=0.82))["dog"]) == 2
    kept = G.keep(dets, "counting", Rules(max_overlap=0.8))["dog"]
    assert kept[0].score == 0.96  # the more confident survives
    for rules in (Rules(), Rules(max_overlap=0.8)):
        ours, ref = both(arrays, colour_of, COUNT2, rules)
        assert ours == ref


def test_verdict_reasons_name_what_failed():
    arrays, colour_of = image(dog=[(0, 0, 9, 9, 0.5, "blue")])
    v = G.verdict(G.keep(as_detections(arrays, colour_of), "colors"), RED)
    assert v.reasons == ["expected red dog>=1, found 0 red; and 1 blue"]
    v = G.verdict({}, COUNT3)
    assert v.reasons == ["expected dog>=3, found 0"]


def test_colour_decision_is_the_first_maximum():
    assert G.color_decision([0.1] * 10) == "red"
    scores = [0.0] * 10
    scores[4] = scores[8] = 1.0
    assert G.color_decision(scores) == "blue"
    with pytest.raises(ValueError, match="2 colour scores for 10"):
        G.color_decision([1.0, 2.0])


def test_summary_is_the_mean_of_task_means():
    tags = ["single_object"] * 4 + ["counting"] * 2
    correct = [True, True, True, False, False, True]
    s = G.summarize(tags, correct)
    assert s["tasks"] == {"single_object": 0.75, "counting": 0.5}
    assert s["overall"] == pytest.approx(0.625)  # not the image mean 4/6
    assert s["images"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        G.summarize([], [])


# ---------------------------------------------------------------------------------------------------------------
# The shipped metadata

def test_shipped_metadata_is_upstreams_553_prompts_in_six_tasks():
    rows = G.load_metadata()
    assert len(rows) == 553 and len({r["prompt"] for r in rows}) == 553
    counts = {t: sum(r["tag"] == t for r in rows) for t in G.TASKS}
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                      "color_attr": 100}
    classes = set(G.class_names())
    assert len(G.class_names()) == 80 and "potted plant" in classes
    for r in rows:  # every clause names a detector class, a known colour, a known relation to an earlier clause
        for k, req in enumerate(r["include"]):
            assert req["class"] in classes and req["count"] >= 1
            assert req.get("color", "red") in G.COLORS
            if "position" in req:
                assert req["position"][0] in G.RELATIONS and req["position"][1] < k
    assert resource_path("geneval/LICENSE").read_text().startswith("MIT License")


def test_every_shipped_spec_gives_the_reference_verdict_and_reward():
    rng = np.random.default_rng(1)
    rows = G.load_metadata()
    for i in range(1200):
        meta = rows[i % len(rows)]
        classes = {req["class"] for req in meta["include"]} | {"car"}
        arrays, colour_of = random_image(rng, sorted(classes))
        wanted = [req["color"] for req in meta["include"] if "color" in req]
        for row in colour_of:  # the spec's colours half the time, so colour clauses both hold and fail
            colour_of[row] = str(rng.choice(wanted)) if wanted and rng.random() < 0.5 else str(rng.choice(G.COLORS))
        ours, ref = both(arrays, colour_of, meta)
        assert ours[0] == ref[0] and ours[1] == pytest.approx(ref[1], abs=1e-12), meta


def test_prompt_lookup_and_unknown_prompts():
    specs = G.specs_for(["a photo of a bench", " a photo of a giraffe "])
    assert [s["tag"] for s in specs] == ["single_object", "single_object"]
    with pytest.raises(AifError) as e:
        G.specs_for(["a photo of a bench", "a cat on the moon", "x", "y", "z"])
    assert "4 prompt(s): 'a cat on the moon', 'x', 'y' and 1 more" in str(e.value)
    assert "--prompts geneval" in str(e.value)


def test_geneval_is_a_builtin_prompt_source():
    from aifeedback.data.prompts import load_prompts

    prompts = load_prompts("geneval")
    assert len(prompts) == 553 and prompts[0].text == "a photo of a bench"


def test_benchmark_scores_intervals_over_prompts():
    # counting: prompt a 2/2 correct, prompt b 0/2; colors: all 3 correct (one prompt)
    tags = ["counting"] * 4 + ["colors"] * 3
    prompts = ["a", "a", "b", "b", "c", "c", "c"]
    correct = [True, True, False, False, True, True, True]
    s = G.benchmark_scores(tags, prompts, correct, resamples=2000, seed=0)
    assert s["tasks"]["counting"]["score"] == 0.5 and s["tasks"]["colors"]["score"] == 1.0
    assert s["overall"]["score"] == 0.75 and s["images_correct"] == pytest.approx(5 / 7) and s["n"] == 7
    # two prompts, whole ones resampled: a counting resample's mean is 0, 0.5 or 1 -> the 95% interval is [0, 1]
    assert (s["tasks"]["counting"]["ci_low"], s["tasks"]["counting"]["ci_high"]) == (0.0, 1.0)
    assert (s["tasks"]["colors"]["ci_low"], s["tasks"]["colors"]["ci_high"]) == (1.0, 1.0)
    # overall = (counting + 1) / 2 per resample -> [0.5, 1]
    assert (s["overall"]["ci_low"], s["overall"]["ci_high"]) == (0.5, 1.0)
    assert s["tasks"]["counting"]["n_prompts"] == 2
