"""The GenEval rules (Ghosh et al. 2023, `djghosh13/geneval` `evaluation/evaluate_images.py`), pure: no models.

From one image's detections (per COCO class: boxes, scores, masks) and a colour label per object it is asked about,
to the upstream verdict (`verdict`), to the RL reward with partial credit (`partial_credit`), and from many verdicts
to the summary (`summarize`, as upstream's `evaluation/summary_scores.py`; `benchmark_scores` adds bootstrap
intervals for `aif eval --benchmark geneval`). The prompt specs ship in `resources/geneval/` (`load_metadata`,
`specs_for`). The models that produce detections and colours live in `scoring/scorers/geneval.py`.

Upstream's steps, restated (REFERENCE.md section 11; upstream defaults in `Rules`):
  keep       per class: detections with score > threshold (0.3; 0.9 when the task is counting), most confident
             first, the first 16, then greedy suppression of any box whose IoU (pixel-inclusive, +1 on each side)
             with a kept one reaches max_overlap - upstream's default max_overlap is 1.0, which turns it off.
  include    each clause {class, count[, color][, position]} must hold (AND): the `count` most confident kept
             objects of the class exist; with a colour, each of them is classified that colour; with a position
             [relation, group], every one of them stands in that relation to every object of the earlier clause
             `group` (which must itself have held).
  exclude    each clause {class, count} fails the image when the class has >= count kept objects (OR).
  position   A relative to B from box centres: offset = centre_A - centre_B, shrunk towards 0 per axis by
             0.1 x (width_A + width_B) (heights for y); none when both shrunk offsets are < 1e-3; otherwise the
             shrunk offset over the length of the unshrunk one: x < -0.5 "left of", > 0.5 "right of", y < -0.5
             "above", > 0.5 "below" (image y grows downwards).
  colour     zero-shot CLIP over COLORS: the argmax of the per-crop scores (first maximum on ties).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from aifeedback.errors import DataError
from aifeedback.resources import resource_path

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# upstream's zero-shot prompts for colours, {c} a colour and {obj} the class name
COLOR_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
RELATIONS = ("left of", "right of", "above", "below")
METADATA = "geneval/evaluation_metadata.jsonl"  # upstream's prompts/evaluation_metadata.jsonl (MIT, shipped)
CLASSES = "geneval/object_names.txt"  # upstream's evaluation/object_names.txt: the detector's 80 COCO classes


@dataclass(frozen=True)
class Rules:
    """Upstream's options (`--options threshold=... counting_threshold=... max_objects=... max_overlap=...
    position_threshold=...`) at their defaults."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # 1.0: no suppression (upstream's default)
    position_margin: float = 0.1


@dataclass(frozen=True)
class Detection:
    """One detected object: box (x1, y1, x2, y2) in pixels, confidence, optional HxW mask, optional colour label."""

    box: tuple[float, float, float, float]
    score: float
    mask: Any = None
    color: str | None = None


@dataclass
class Verdict:
    correct: bool
    reasons: list[str] = field(default_factory=list)


# colours of a class's objects (in order); the default reads each Detection's own `color`
ColorFn = Callable[[str, Sequence[Detection]], Sequence[str]]


def given_colors(classname: str, objects: Sequence[Detection]) -> list[str]:
    missing = [i for i, o in enumerate(objects) if o.color is None]
    if missing:
        raise ValueError(f"GenEval: objects {missing} of class '{classname}' have no colour label")
    return [o.color for o in objects]


def color_decision(scores: Sequence[float]) -> str:
    """The colour whose zero-shot score is highest (COLORS order; the first maximum on ties, as torch's argmax)."""
    if len(scores) != len(COLORS):
        raise ValueError(f"GenEval: {len(scores)} colour scores for {len(COLORS)} colours {COLORS}")
    return COLORS[max(range(len(COLORS)), key=lambda i: (scores[i], -i))]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Upstream's box IoU: pixel-inclusive areas (side + 1), 0 when the union is empty."""

    def area(x1, y1, x2, y2):
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0.0


def keep(detections: Mapping[str, Iterable[Detection]], tag: str, rules: Rules = Rules()) -> dict[str, list[Detection]]:
    """Per class, the objects GenEval counts, most confident first; classes with none are left out."""
    threshold = rules.counting_threshold if tag == "counting" else rules.threshold
    kept: dict[str, list[Detection]] = {}
    for classname, dets in detections.items():
        dets = list(dets)
        # most confident first, equal scores in the order upstream's reversed numpy argsort (default kind) gives
        order = np.argsort(np.array([d.score for d in dets], dtype=np.float64))[::-1].tolist()
        candidates = [dets[i] for i in order if dets[i].score > threshold][: rules.max_objects]
        chosen: list[Detection] = []
        while candidates:
            best = candidates.pop(0)
            chosen.append(best)
            if rules.max_overlap != 1:
                candidates = [d for d in candidates if iou(best.box, d.box) < rules.max_overlap]
        if chosen:
            kept[classname] = chosen
    return kept


def relative_position(a: Sequence[float], b: Sequence[float], margin: float = 0.1) -> set[str]:
    """The relations of box a to box b (x1, y1, x2, y2) that hold beyond the margin."""
    offset = [(a[0] + a[2]) / 2 - (b[0] + b[2]) / 2, (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2]
    sizes = [abs(a[2] - a[0]) + abs(b[2] - b[0]), abs(a[3] - a[1]) + abs(b[3] - b[1])]
    shrunk = [math.copysign(max(abs(o) - margin * s, 0.0), o) if o else 0.0 for o, s in zip(offset, sizes)]
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    length = math.hypot(*offset)
    dx, dy = shrunk[0] / length, shrunk[1] / length
    found = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {rel for rel, holds in found.items() if holds}


def _position_failure(objs, targets, relation: str, margin: float) -> set[str] | None:
    """None when every object is `relation` to every target, else the relations of the first pair that is not."""
    for obj in objs:
        for target in targets:
            rels = relative_position(obj.box, target.box, margin)
            if relation not in rels:
                return rels
    return None


def verdict(objects: Mapping[str, Sequence[Detection]], metadata: Mapping[str, Any], colors: ColorFn = given_colors,
            rules: Rules = Rules()) -> Verdict:
    """Upstream's `evaluate`: is the image correct for its task spec, and why not. `objects` is `keep`'s output."""
    out = Verdict(True)
    groups: list[list[Detection] | None] = []  # the objects each include clause matched (None: it failed)
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        found = list(objects.get(name, []))[:count]
        ok = len(found) >= count
        if not ok:
            out.reasons.append(f"expected {name}>={count}, found {len(found)}")
        if ok and "color" in req:
            labels = list(colors(name, found))
            if labels.count(req["color"]) < count:
                ok = False
                tally = ", ".join(f"{labels.count(c)} {c}" for c in COLORS if c in labels)
                out.reasons.append(f"expected {req['color']} {name}>={count}, found "
                                   f"{labels.count(req['color'])} {req['color']}; and {tally}")
        if ok and "position" in req:
            relation, group = req["position"]
            if groups[group] is None:
                ok = False
                out.reasons.append(f"no target for {name} to be {relation}")
            else:
                rels = _position_failure(found, groups[group], relation, rules.position_margin)
                if rels is not None:
                    ok = False
                    out.reasons.append(f"expected {name} {relation} target, found {' and '.join(rels)} target")
        groups.append(found if ok else None)
        out.correct = out.correct and ok
    for req in metadata.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= req["count"]:
            out.correct = False
            out.reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return out


def partial_credit(objects: Mapping[str, Sequence[Detection]], metadata: Mapping[str, Any],
                   colors: ColorFn = given_colors, rules: Rules = Rules()) -> float:
    """The RL reward: the mean of per-clause credits, as Flow-GRPO's GenEval reward server computes it
    (`yifan123/reward-server`, `reward_server/gen_eval.py` `evaluate_reward`, whose `score` is the `geneval` reward
    of `flow_grpo/rewards.py`). Per include clause, with n = all kept objects of the class (not only the first
    `count`):
      count credit     1 - |count - n| / count (below 0 when n > 2 x count, as there: no clamp);
      n != count       a clause with a colour or a position adds one more credit 0 (exact count wanted, stricter
                       than `verdict`'s "at least");
      colour           1 - |count - objects of that colour| / count;
      position         target clause failed: 0; else 1, and one more 0 when some pair is not in the relation (the
                       server appends 0 at the failing pair and 1 after the loop, so a failed position clause
                       counts 0 and 1).
    Exclude clauses are not read (the exact count covers them). No clause: 0.
    """
    credits: list[float] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        found = list(objects.get(name, []))
        credits.append(1 - abs(count - len(found)) / count)
        ok = len(found) == count
        if not ok and ("color" in req or "position" in req):
            credits.append(0.0)
        if ok and "color" in req:
            hits = list(colors(name, found)).count(req["color"])
            credits.append(1 - abs(count - hits) / count)
            ok = hits == count
        if ok and "position" in req:
            relation, group = req["position"]
            if groups[group] is None:
                ok = False
                credits.append(0.0)
            else:
                if _position_failure(found, groups[group], relation, rules.position_margin) is not None:
                    ok = False
                    credits.append(0.0)
                credits.append(1.0)
        groups.append(found if ok else None)
    return sum(credits) / len(credits) if credits else 0.0


def summarize(tags: Sequence[str], correct: Sequence[bool]) -> dict[str, Any]:
    """Upstream's summary_scores.py: per task the fraction of correct images, overall = the mean of the task
    means (over the tasks present, in first-seen order), and the fraction of correct images overall."""
    if len(tags) != len(correct) or not tags:
        raise ValueError(f"summarize: {len(tags)} tags for {len(correct)} verdicts; pass one tag per verdict, not none")
    per: dict[str, list[bool]] = {}
    for tag, ok in zip(tags, correct):
        per.setdefault(tag, []).append(bool(ok))
    tasks = {tag: sum(v) / len(v) for tag, v in per.items()}
    return {"overall": sum(tasks.values()) / len(tasks), "tasks": tasks, "images": sum(map(bool, correct)) / len(tags)}


def load_metadata(path=None) -> list[dict[str, Any]]:
    """The task specs, one per prompt ({tag, prompt, include[, exclude]}): the shipped 553, or a file like it."""
    path = resource_path(METADATA) if path is None else path
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if row.get("tag") not in TASKS or "prompt" not in row or not row.get("include"):
                raise DataError(f"{path}, line {n}: not a GenEval task spec (needs a tag among {', '.join(TASKS)}, "
                                "a prompt and include clauses). Fix: use upstream's evaluation_metadata.jsonl format.")
            rows.append(row)
    return rows


def class_names() -> list[str]:
    """The 80 COCO class names GenEval's detector reports, in its label order."""
    return [line.strip() for line in resource_path(CLASSES).read_text(encoding="utf-8").splitlines() if line.strip()]


def specs_for(prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
    """The task spec of each prompt (looked up by its exact text, stripped); every unknown prompt named at once."""
    by_prompt = {row["prompt"]: row for row in (load_metadata() if metadata is None else metadata)}
    unknown = sorted({p for p in prompts if p.strip() not in by_prompt})
    if unknown:
        shown = ", ".join(repr(p) for p in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise DataError(f"GenEval has no task spec for {len(unknown)} prompt(s): {shown}. The geneval scorer checks "
                        "an image against its prompt's spec (objects, counts, colours, positions), so it scores only "
                        "GenEval's own prompts. Fix: generate with --prompts geneval (its 553 prompts), or use another "
                        "scorer for these prompts.")
    return [by_prompt[p.strip()] for p in prompts]


def benchmark_scores(tags: Sequence[str], prompts: Sequence[str], correct: Sequence[bool], resamples: int = 10_000,
                     seed: int = 0) -> dict[str, Any]:
    """`summarize` with 95% percentile-bootstrap intervals over prompts (a prompt's images resampled together).

    Each task resamples its own prompts (stratified: every resample keeps all six tasks); the overall score of a
    resample is the mean of its task means, so the overall interval comes from the same draws."""
    from aifeedback.evaluation.winrate import bootstrap_means, percentile_ci

    summary = summarize(tags, correct)
    tasks, draws = {}, []
    for i, tag in enumerate(summary["tasks"]):
        at = [j for j, t in enumerate(tags) if t == tag]
        means = bootstrap_means([float(correct[j]) for j in at], [prompts[j] for j in at], resamples, seed + i)
        lo, hi = percentile_ci(means)
        tasks[tag] = {"score": summary["tasks"][tag], "ci_low": lo, "ci_high": hi, "n": len(at),
                      "n_prompts": len({prompts[j] for j in at})}
        draws.append(means)
    lo, hi = percentile_ci(np.mean(draws, axis=0))
    return {"overall": {"score": summary["overall"], "ci_low": lo, "ci_high": hi}, "tasks": tasks,
            "images_correct": summary["images"], "n": len(tags)}
