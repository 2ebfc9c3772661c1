"""`aif eval`: does the tuned model beat its base? The paper's protocol, with a report.

1. Generate with `aif generate` (its public `run`) into OUT/base and OUT/tuned: the same prompts and the same seeds
   (a candidate's seed depends only on --seed, the prompt and k), so each tuned image has a base twin. --tuned is
   a whole model (anything --base takes) or weights applied to --base. Those are ordinary resumable generate
   outputs: a rerun reuses every finished image, and a rerun with other scorers only scores.
2. Score every twin pair with each scorer (`aifeedback.scoring.scorers.load_scorer`); processes split the pairs.
3. The main process writes report.json / report.md / report.html and grids/*.png (see `aifeedback.evaluation.report`).
A rerun of a finished eval with the same settings loads no model: it prints the report's win rates again.

`--scorer-accuracy DATASET` instead measures how often each scorer agrees with human labels on any set a pair source
reads (non-tie pairs; the paper's Table 2, and the HPSv3 README's table on HPDv3 / HPDv2 test), so users can pick a
scorer before training on its labels.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq
import torch
from accelerate.utils import gather_object

from aifeedback.config import build_config, identity_dict, save_config, to_dict
from aifeedback.console import finish, nested, progress, quiet_libraries
from aifeedback.data.labels import LABEL_COLUMNS, PAIR_COLUMNS, winner_of
from aifeedback.data.mapping import parse_columns
from aifeedback.data.sources import open_pairs, source_for
from aifeedback.dist import process_state
from aifeedback.errors import DataError
from aifeedback.evaluation.report import build_report, example_keys, write_report
from aifeedback.evaluation.winrate import preference_accuracy
from aifeedback.families.resolve import is_pipeline
from aifeedback.scoring import scorers as registry  # a module attribute: tests patch load_scorer
from aifeedback.scoring.loop import given, pair_groups, score_groups
from aifeedback.stages import generate
from aifeedback.stages.evaluate_config import EvalConfig
from aifeedback.stages.generate import GenerateConfig
from aifeedback.stages.sample import pin_tuned
from aifeedback.storage.files import atomic_write_text, read_json, write_json
from aifeedback.storage.manifest import completed_output, finish_output, prepare_output_synced
from aifeedback.storage.shards import shard_files

# The paper's Table 2: agreement with human labels on Pick-a-Pic v2 validation (non-tie pairs), in %.
PAPER_ACCURACY = {"pickscore": 64.2, "hpsv2": 59.3, "clip": 57.1, "aesthetic": 51.4}
# accuracy.md's published column per pair source (the set it reads): (title, {scorer: %}); REFERENCE.md section 11
PUBLISHED = {"hpdv3": ("HPSv3 README (HPDv3 test)", {"hpsv3": 76.9}),
             "hpdv2": ("HPSv3 README (HPDv2 test)", {"pickscore": 79.8, "hpsv2": 83.3, "hpsv3": 85.4}),
             "imagerewarddb": ("HPSv3 README (ImageReward test)", {"imagereward": 65.1})}


def run(cfg: EvalConfig) -> dict[str, Any] | None:
    """Run the eval (or the scorer-accuracy check); return the report on the main process."""
    cfg.preflight()
    quiet_libraries()
    cfg = with_benchmark_scorer(cfg)
    if cfg.scorer_accuracy:
        return scorer_accuracy(cfg)
    state = process_state()
    out = Path(cfg.out)
    done = finished(cfg, out, "report.json")
    if done is not None:  # a rerun of a finished eval: nothing to generate or score, so no model to load
        if state.is_main_process:
            print(f"already complete: {out} ({done['n_comparisons']} comparisons)")
            _print_summary(done, out)
        return done if state.is_main_process else None
    manifest = prepare_output_synced(state, out, "eval", to_dict(cfg), identity_dict(cfg), cfg.overwrite)
    if state.is_main_process:
        save_config(cfg, out / "config.yaml")

    generate_both(cfg, out)
    rows = twin_rows(out / "base", out / "tuned")
    scores = score_twins(cfg, rows)
    report = None
    if state.is_main_process:
        report = build_report(rows, scores, report_meta(cfg, out), cfg.bootstrap, cfg.seed, cfg.examples,
                              cfg.sample_prompts)
        if cfg.benchmark:
            report["benchmark"] = benchmark_report(cfg, rows, scores)
        write_report(out, report, read_images(out, example_keys(report)), cfg.thumb)
        finish_output(out, dict(manifest, config=to_dict(cfg)), comparisons=len(rows), scorers=list(scores),
                      processes=state.num_processes)
        _print_summary(report, out)
    state.wait_for_everyone()
    return report


# Settings that change only speed or where results go; every other one shapes report.json / accuracy.json.
SPEED_ONLY = ("out", "overwrite", "device", "batch_size", "scorer_batch_size")


def finished(cfg: EvalConfig, out: Path, result: str) -> dict[str, Any] | None:
    """The result file (report.json or accuracy.json) of a finished eval with these very settings in out, else None.

    Scorers and report options are no part of the job's identity (a rerun with other scorers reuses the images and
    only scores), so they are compared here; so are both generate outputs (--tuned RUN_DIR may have a newer
    checkpoint)."""
    done = completed_output(out, "eval", identity_dict(cfg))
    if not done or not (out / result).is_file():
        return None
    now = json.loads(json.dumps(to_dict(cfg), default=str))  # as the manifest stores it
    if any(done["config"].get(k) != v for k, v in now.items() if k not in SPEED_ONLY):
        return None
    if not cfg.scorer_accuracy and not all(generate.completed(generate_config(cfg, s, out)) for s in SIDES):
        return None
    return read_json(out / result)


# ---------------------------------------------------------------------------------------------------------------
# Generation: two ordinary `aif generate` runs

SIDES = ("base", "tuned")


def generate_config(cfg: EvalConfig, side: str, out: Path):
    """The GenerateConfig of one side ('base' or 'tuned'); unset options keep aif generate's defaults.

    A --tuned whole model (anything --base takes) is generated as it is; tuned weights are applied to --base."""
    weights = side == "tuned" and not is_pipeline(cfg.tuned)
    values = {
        "model": cfg.tuned if side == "tuned" and not weights else cfg.base,
        "tuned": pin_tuned(cfg.tuned) if weights else None, "prompts": cfg.prompts,
        "prompt_column": cfg.prompt_column, "split": cfg.split, "limit": cfg.limit,
        "images_per_prompt": cfg.seeds_per_prompt, "seed": cfg.seed, "steps": cfg.steps, "guidance": cfg.guidance,
        "resolution": cfg.resolution, "negative_prompt": cfg.negative_prompt, "scheduler": cfg.scheduler,
        "dtype": cfg.dtype, "vae": cfg.vae, "batch_size": cfg.batch_size, "image_format": "png",  # lossless
        "base_quantization": cfg.base_quantization,
        "device": cfg.device, "out": str(out / side), "overwrite": cfg.overwrite, "progress": cfg.progress,
    }
    return build_config(GenerateConfig, {k: v for k, v in values.items() if v is not None}, f"eval -> generate {side}")


def generate_both(cfg: EvalConfig, out: Path) -> None:
    """Generate (or resume) OUT/base and OUT/tuned; every process takes part, as in `aif generate`."""
    for side in SIDES:
        with nested():  # its summary must not suggest `aif score`: eval goes on with its own scoring
            generate.run(generate_config(cfg, side, out))
        gc.collect()
        _empty_cache()
    process_state().wait_for_everyone()


def twin_rows(base_dir: Path, tuned_dir: Path) -> list[dict[str, Any]]:
    """One row per (prompt, k) present in both outputs, in the base output's order, with where each image lives."""
    base = _index(base_dir)
    tuned = _index(tuned_dir)
    if set(base) != set(tuned):
        only = sorted(set(base) ^ set(tuned))
        raise DataError(f"{base_dir} and {tuned_dir} hold different prompts or seeds (e.g. {only[0]}); they "
                        f"were generated with different settings. Fix: rerun with --overwrite.")
    rows = []
    for key, b in base.items():
        t = tuned[key]
        if b["seed"] != t["seed"]:
            raise DataError(f"prompt {key[0]} k={key[1]}: seed {b['seed']} in {base_dir} but {t['seed']} in "
                            f"{tuned_dir}. Fix: rerun with --overwrite.")
        rows.append({**{k: b[k] for k in ("prompt_id", "prompt", "category", "k", "seed")},
                     "base_at": b["at"], "tuned_at": t["at"]})
    if not rows:
        raise DataError(f"{base_dir} holds no images")
    return rows


def _index(gen_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for path in shard_files(gen_dir):
        schema = pq.read_schema(path)
        cols = [c for c in ("prompt_id", "prompt", "category", "k", "seed") if c in schema.names]
        for i, r in enumerate(pq.read_table(path, columns=cols).to_pylist()):
            r.setdefault("category", None)
            out[(r["prompt_id"], r["k"])] = {**r, "at": (str(path), i)}
    return out


def read_images(out: Path, keys: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[bytes, bytes]]:
    """(base, tuned) image bytes of the given comparisons."""
    rows = [r for r in twin_rows(out / "base", out / "tuned") if (r["prompt_id"], r["k"]) in keys]
    reader = ShardBytes()
    return {(r["prompt_id"], r["k"]): (reader.get(r["base_at"]), reader.get(r["tuned_at"])) for r in rows}


class ShardBytes:
    """Image bytes by (shard file, row), keeping the last `keep` shards read (the current base and tuned shards,
    and the next ones of a batch that crosses a shard boundary): rows are visited in shard order, so each shard's
    image column is read from disk once. Also the scoring loop's `read` of such (file, row) sources."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.shards: dict[str, list[bytes]] = {}

    def get(self, at: tuple[str, int]) -> bytes:

        path, i = at
        if path not in self.shards:
            if len(self.shards) >= self.keep:
                self.shards.pop(next(iter(self.shards)))
            self.shards[path] = pq.read_table(path, columns=["image"]).column("image").to_pylist()
        return self.shards[path][i]

    def __call__(self, sources: list[tuple[str, int]]) -> list[bytes]:
        return [self.get(at) for at in sources]


# ---------------------------------------------------------------------------------------------------------------
# Scoring: both sides of a pair (base/tuned twins, or a human pair's two images) in one group of the scoring loop

# Images per scorer forward pass: a batch of --scorer-batch-size pairs is scored per side in forwards of at most
# this many images, as eval always has (Scorer.score's batching), so scores stay bitwise what they were.
FORWARD_BATCH = 32


def score_pairs(cfg: EvalConfig, pairs: Iterable[tuple[Any, Any, str]], read, sides: tuple[str, str], desc: str,
                total: int | None = None) -> dict[Any, list]:
    """key -> [(side 0 score, side 1 score) per scorer] of this process's share of the (key, (source_0, source_1),
    prompt) pairs: groups of --scorer-batch-size pairs, round-robin over processes. `total`: the number of pairs,
    for the progress bar. An unreadable image is a DataError naming its pair and side."""
    state = process_state()
    specs = cfg.served(cfg.scorers, "--scorers", local=[benchmark_spec(cfg)] if cfg.benchmark else [])
    pairwise = [n for n, spec in enumerate(cfg.scorers) if registry.is_pairwise(spec)]
    if pairwise:  # judged pair by pair (judge_pairs); the loop below scores the others image by image
        pairs = list(pairs)
        judged = {n: judge_pairs(cfg, pairs, read, specs[n], state, sides) for n in pairwise}
        if len(pairwise) == len(specs):
            return {key: [judged[n][key] for n in pairwise] for key in judged[pairwise[0]]}
    scorers = [registry.load_scorer(spec, device=_device(cfg, state), dtype=cfg.scorer_dtype)
               for n, spec in enumerate(specs) if n not in pairwise]
    size, rank, world = cfg.scorer_batch_size, state.process_index, state.num_processes
    mine = None if total is None else sum(2 * min(size, total - g) for g in range(rank * size, total, world * size))
    bar = progress(total=mine, desc=desc, unit="img", enabled=cfg.progress and state.is_main_process)
    by_key: dict[Any, list] = {}
    for scored in score_groups(pair_groups(pairs, size), read, scorers, FORWARD_BATCH, share=(rank, world), bar=bar):
        for (key, side), scores, error in zip(scored.keys, scored.scores, scored.errors, strict=True):
            if error is not None:
                raise DataError(f"pair {key}, {sides[side]} image: {error}")
            by_key.setdefault(key, [None, None])[side] = scores
    bar.close()
    del scorers
    gc.collect()
    _empty_cache()
    if pairwise:  # each pairwise judge's (1 - p, p) back in its place among the scorers
        for key, sides in by_key.items():
            scores = iter(zip(*sides, strict=True))
            by_key[key] = [judged[n][key] if n in pairwise else next(scores) for n in range(len(specs))]
        return by_key
    return {key: list(zip(s0, s1, strict=True)) for key, (s0, s1) in by_key.items()}


def judge_pairs(cfg: EvalConfig, pairs: list[tuple[Any, Any, str]], read, spec: str, state,
                sides: tuple[str, str]) -> dict[Any, tuple]:
    """key -> (1 - p, p) of this process's share of the pairs, p = P(side 1's image is better) from a pairwise
    judge that sees both images (both orders averaged, vlm_judges.PairJudging.compare), so a win rate counts the
    pairs where p > 0.5 and the side means are the mean probabilities of winning. Batches of --scorer-batch-size
    pairs, round-robin over processes."""
    judge = registry.load_scorer(spec, device=_device(cfg, state), dtype=cfg.scorer_dtype)
    size, rank, world = cfg.scorer_batch_size, state.process_index, state.num_processes
    out: dict[Any, tuple] = {}
    for start in range(rank * size, len(pairs), world * size):
        batch = pairs[start : start + size]
        first, second = ([_decoded(key, side, sides, b) for (key, _, _), b in zip(batch, read([p[1][side] for p in
                          batch]))] for side in (0, 1))
        ps = judge.compare(second, first, [p[2] for p in batch], batch_size=FORWARD_BATCH // 2)
        out.update({key: (1.0 - p, p) for (key, _, _), p in zip(batch, ps, strict=True)})
    del judge
    gc.collect()
    return out


def _decoded(key, side: int, sides: tuple[str, str], value):
    from aifeedback.data.images import decode_image

    try:
        return decode_image(value, rgb=False)  # in its own mode, as the scoring loop hands images to the scorers
    except ValueError as e:
        raise DataError(f"pair {key}, {sides[side]} image: {e}") from None


def score_twins(cfg: EvalConfig, rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """scorer -> (base scores, tuned scores) aligned with rows; the processes split the rows (see score_pairs)."""
    twins = ((i, (r["base_at"], r["tuned_at"]), r["prompt"]) for i, r in enumerate(rows))
    mine = score_pairs(cfg, twins, ShardBytes(), SIDES, "scoring", total=len(rows))
    every = sorted(gather_object(list(mine.items())))
    if [i for i, _ in every] != list(range(len(rows))):
        raise RuntimeError("scores were lost or doubled while gathering across processes")
    return {spec: ([s[n][0] for _, s in every], [s[n][1] for _, s in every]) for n, spec in enumerate(cfg.scorers)}


def _device(cfg: EvalConfig, state) -> str:
    return str(state.device) if cfg.device == "auto" else cfg.device


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def report_meta(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    """What the report says about the run: the eval settings and the generation settings actually used."""
    base = read_json(out / "base" / "manifest.json")
    tuned = read_json(out / "tuned" / "manifest.json")
    meta = {"base": cfg.base, "tuned": cfg.tuned, "tuned_weights": tuned["config"].get("tuned"), "prompts": cfg.prompts,
            "seeds_per_prompt": cfg.seeds_per_prompt, "seed": cfg.seed, "steps": base["config"].get("steps")}
    # Values generate resolved from the model (steps, guidance, size, sampler) are in its manifest's "resolved".
    recorded = {**base.get("inputs", {}), **base.get("resolved", {})}
    for key in ("steps", "guidance", "width", "height", "scheduler", "dtype"):
        if recorded.get(key) is not None:
            meta[key] = recorded[key]
    if base["config"].get("negative_prompt"):
        meta["negative_prompt"] = base["config"]["negative_prompt"]
    return meta


def _print_summary(report: dict[str, Any], out: Path) -> None:
    for name, s in report["scorers"].items():
        print(f"{name:>20}: tuned wins {100 * s['win_rate']:.1f}% (95% CI {100 * s['ci_low']:.1f}-"
              f"{100 * s['ci_high']:.1f}%), mean {s['mean_base']:.4g} -> {s['mean_tuned']:.4g}, n={s['n']}")
    for name, sides in report.get("benchmark", {}).items():
        for side, b in sides.items():
            tasks = ", ".join(f"{t} {v['score']:.3f}" for t, v in b["tasks"].items())
            print(f"{name:>20}: {side} overall {b['overall']['score']:.3f} (95% CI {b['overall']['ci_low']:.3f}-"
                  f"{b['overall']['ci_high']:.3f}); {tasks}")
    n = next(iter(report["scorers"].values()))["n"]
    finish("eval", out, f"{n} base/tuned twin pairs scored by {len(report['scorers'])} scorer(s), report.html",
           f"open {out / 'report.html'}")


# ---------------------------------------------------------------------------------------------------------------
# --benchmark geneval: upstream's scores from the geneval-verdict scorer's 1/0 per image

def benchmark_spec(cfg: EvalConfig) -> str:
    """The verdict scorer the benchmark reads: one in --scorers, else geneval-verdict with the detector of a
    `geneval:MODEL` there (so geneval:tiny gives geneval-verdict:tiny), else the default one."""
    from aifeedback.scoring.scorers import parse_spec

    specs = [(spec, *parse_spec(spec)) for spec in cfg.scorers]
    given = [spec for spec, name, _ in specs if name == "geneval-verdict"]
    models = [model for _, name, model in specs if name == "geneval" and model]
    return given[0] if given else "geneval-verdict" + (f":{models[0]}" if models else "")


def with_benchmark_scorer(cfg: EvalConfig) -> EvalConfig:
    if not cfg.benchmark or benchmark_spec(cfg) in cfg.scorers:
        return cfg
    return dataclasses.replace(cfg, scorers=[*cfg.scorers, benchmark_spec(cfg)])


def benchmark_report(cfg: EvalConfig, rows: list[dict[str, Any]], scores) -> dict[str, Any]:
    """{"geneval": {"base": scores, "tuned": scores}}: `evaluation.geneval.benchmark_scores` of each side."""
    from aifeedback.evaluation.geneval import benchmark_scores, specs_for

    tags = [spec["tag"] for spec in specs_for([r["prompt"] for r in rows])]
    prompts = [r["prompt_id"] for r in rows]
    verdicts = dict(zip(SIDES, scores[benchmark_spec(cfg)]))
    return {"geneval": {side: benchmark_scores(tags, prompts, [v == 1.0 for v in verdicts[side]], cfg.bootstrap,
                                               cfg.seed) for side in SIDES}}


# ---------------------------------------------------------------------------------------------------------------
# Scorer accuracy against human labels (the paper's Table 2)

def preference_pairs(source: str, split: str | None = None, limit: int | None = None,
                     columns: list[str] | None = None, pairing: str = "all") -> Iterator[dict[str, Any]]:
    """Labelled pairs (caption, jpg_0, jpg_1, label_0 in {0, 1}) of any pair source, streamed.

    source: whatever `aifeedback.data.sources` reads (a local Parquet file or folder, with the one split rule; an
    `aif score` output, its data/ shards; a hub id, default split validation). The source is checked (files,
    columns) when this is called, the pairs are read while iterating.
    """
    table = open_pairs(source, split, labels=True, streaming=True, hub_split="validation",
                       columns=parse_columns(columns), pairing=pairing)
    return _decisive(table.iter_rows(list(PAIR_COLUMNS + LABEL_COLUMNS) + ["has_label"]), limit)


def _decisive(rows: Iterator[dict[str, Any]], limit: int | None) -> Iterator[dict[str, Any]]:
    n = 0
    for row in rows:
        winner = winner_of(row["label_0"], row["label_1"], row.get("has_label"))  # the same label rule as training
        if winner not in (0, 1):
            continue  # unlabelled, a tie or an unreadable label: Table 2 counts decisive human votes only
        yield {"caption": row["caption"], "jpg_0": row["jpg_0"], "jpg_1": row["jpg_1"], "label_0": float(winner == 0)}
        n += 1
        if limit is not None and n >= limit:
            return


def scorer_accuracy(cfg: EvalConfig) -> dict[str, Any] | None:
    """Accuracy of each scorer against the human labels of cfg.scorer_accuracy; writes accuracy.json / .md."""
    state = process_state()
    out = Path(cfg.out)
    done = finished(cfg, out, "accuracy.json")
    if done is not None:  # a rerun of a finished check: nothing to score, so no scorer to load
        if state.is_main_process:
            print(f"already complete: {out} ({done['n_pairs']} pairs)\n{accuracy_markdown(done)}")
        return done if state.is_main_process else None
    # checks the files before any scorer loads
    pairs = preference_pairs(cfg.scorer_accuracy, cfg.split, cfg.limit, cfg.columns, cfg.ranked_pairs)
    manifest = prepare_output_synced(state, out, "eval", to_dict(cfg), identity_dict(cfg), cfg.overwrite)
    labels: list[float] = []  # every pair's, in order: a process keeps those of its share

    def labelled() -> Iterator[tuple[int, tuple[Any, Any], str]]:
        for i, pair in enumerate(pairs):
            labels.append(pair["label_0"])
            yield i, (pair["jpg_0"], pair["jpg_1"]), pair["caption"]

    scored = score_pairs(cfg, labelled(), given, ("jpg_0", "jpg_1"), "scoring pairs")
    mine = [(i, labels[i], s) for i, s in scored.items()]
    every = sorted(gather_object(mine))
    if not every:
        raise DataError(f"{cfg.scorer_accuracy} holds no non-tie labelled pairs")
    result = None
    if state.is_main_process:
        labels = [lab for _, lab, _ in every]
        accs = {spec: preference_accuracy([s[n][0] for _, _, s in every], [s[n][1] for _, _, s in every], labels,
                                          cfg.bootstrap, cfg.seed).to_dict()
                for n, spec in enumerate(cfg.scorers)}
        source = "columns" if cfg.columns else source_for(cfg.scorer_accuracy).name
        result = {"dataset": cfg.scorer_accuracy, "split": cfg.split, "source": source, "n_pairs": len(every),
                  "protocol": "non-tie human pairs; a scorer is right when it scores the human winner higher "
                              "(exact score ties count 0.5); 95% CI: percentile bootstrap over pairs",
                  "scorers": accs}
        write_json(out / "accuracy.json", result)
        atomic_write_text(out / "accuracy.md", accuracy_markdown(result))
        finish_output(out, dict(manifest, config=to_dict(cfg)), pairs=len(every), scorers=list(cfg.scorers),
                      processes=state.num_processes)
        print(accuracy_markdown(result))
        finish("eval", out, f"scorer accuracy on {len(every)} human pairs, accuracy.md",
               f"aif score --input GENERATE_DIR --out PAIRS_DIR --scorer {max(accs, key=lambda s: accs[s]['accuracy'])}"
               " (the most accurate scorer here)")
    state.wait_for_everyone()
    return result


def accuracy_markdown(result: dict[str, Any]) -> str:
    """accuracy.md: one row per scorer, next to the paper's Table 2 figure where there is one."""
    lines = [f"# Scorer accuracy on {result['dataset']} ({result['n_pairs']} non-tie pairs)", "",
             result["protocol"] + ".", ""]
    title, published = PUBLISHED.get(result.get("source"), ("paper (Pick-a-Pic v2 val)", PAPER_ACCURACY))
    lines += [f"| scorer | accuracy | 95% CI | score ties | {title} |", "|---|---|---|---|---|"]
    for spec, a in result["scorers"].items():
        paper = published.get(spec.split(":")[0])
        lines.append(f"| {spec} | {100 * a['accuracy']:.1f}% | {100 * a['ci_low']:.1f} - {100 * a['ci_high']:.1f}% "
                     f"| {a['score_ties']} | {f'{paper}%' if paper else '-'} |")
    return "\n".join(lines) + "\n"
