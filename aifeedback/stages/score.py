"""`aif score`: score images with reward models and write preference pairs in the Pick-a-Pic layout.

Two phases, both resumable shard by shard and split over `accelerate launch` processes:
  1. score   every image of shard i with every scorer -> OUT/image_scores/scores-i.parquet (raw scores,
             or the reason an image could not be read)
  2. pair    per prompt: ensemble the scores (per-prompt normalisation), pick pairs, label them, copy the image
             bytes (and latents) -> OUT/data/train-i.parquet
Phase 2 waits for all of phase 1, because an ensemble normalises each scorer over all images of a prompt, and in
a Pick-a-Pic input one caption's pairs can sit in many shards. Rank 0 then writes summary.json and prints it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifeedback.errors import AifError
from aifeedback.stages.score_config import ScoreConfig

SCORES_DIR = "image_scores"  # per-image raw scores: OUT/image_scores/scores-NNNNN.parquet


def scorer_label(cfg: ScoreConfig) -> str:
    """What the `scorer` column says: the spec, or the weighted ensemble with its normalisation."""
    if len(cfg.scorer) == 1:
        return cfg.scorer[0]
    w = ensemble_weights(cfg)
    terms = " + ".join(f"{wi:g}*{s}" for wi, s in zip(w, cfg.scorer))
    return f"{cfg.normalize}({terms})" if cfg.normalize != "none" else terms


def ensemble_weights(cfg: ScoreConfig) -> list[float]:
    """The weights, defaulting to equal ones that sum to 1."""
    return list(cfg.weights) if cfg.weights else [1.0 / len(cfg.scorer)] * len(cfg.scorer)


def run(cfg: ScoreConfig) -> dict[str, Any]:
    """Score the input, write the pairs dataset, and return the summary (also saved as OUT/summary.json)."""
    cfg.preflight()
    from aifeedback.config import identity_dict, save_config, to_dict
    from aifeedback.console import finish, quiet_libraries
    from aifeedback.dist import process_state
    from aifeedback.scoring.inputs import open_input
    from aifeedback.storage.files import read_json, write_json
    from aifeedback.storage.manifest import completed_output, finish_output, prepare_output_synced
    from aifeedback.storage.shards import chunks, my_shards, shard_done, write_shard

    quiet_libraries()
    state = process_state()
    inp = open_input(cfg.input, cfg.split, cfg.limit)
    if inp.kind == "pairs" and cfg.pairing != "best-worst":
        raise AifError(
            f"--pairing {cfg.pairing} applies to `aif generate` inputs; {cfg.input} already holds pairs, which are "
            f"rescored and relabelled as they are. Drop --pairing."
        )
    out = Path(cfg.out)
    identity, inputs = identity_dict(cfg), inp.fingerprint
    done = completed_output(out, "score", identity, inputs)
    if done:  # a rerun of a finished job: nothing to score, so no scorer to load
        if state.is_main_process:
            print(f"already complete: {out} ({done['counts']['pairs']} pairs)")
        return read_json(out / "summary.json")
    if state.is_main_process:
        _clear_replaced_scores(out, identity, inputs, cfg.overwrite)
    manifest = prepare_output_synced(state, out, "score", to_dict(cfg), identity, cfg.overwrite, inputs)
    if state.is_main_process:
        save_config(cfg, out / "config.yaml")

    shards = chunks(inp.units, cfg.shard_size)
    starts = [i * cfg.shard_size for i in range(len(shards))]
    mine = list(my_shards(len(shards), state.process_index, state.num_processes))
    _score_phase(cfg, inp, shards, starts, [i for i in mine if not scores_path(out, i).exists()], out, state)
    state.wait_for_everyone()

    from aifeedback.scoring import labels as score_pairs

    table = score_pairs.load_scores(sorted((out / SCORES_DIR).glob("scores-*.parquet")), len(cfg.scorer))
    combined = score_pairs.combined_scores(table, ensemble_weights(cfg), cfg.normalize)
    for i in mine:
        if not shard_done(out, i):
            rows = score_pairs.shard_rows(cfg, inp, shards[i], starts[i], table, combined, scorer_label(cfg))
            write_shard(out, i, rows, schema=score_pairs.output_schema(cfg, inp))
    state.wait_for_everyone()

    summary = score_pairs.summarize(cfg, inp, table, combined)
    if state.is_main_process:
        write_json(out / "summary.json", summary)
        finish_output(out, manifest, **summary["counts"], processes=state.num_processes)
        print(score_pairs.format_summary(summary, out))
        model = _generator_model(inputs)
        finish("score", out, f"{summary['counts']['pairs']} preference pairs", f"aif train --data ai --dataset {out} "
               + (f"--model {model} " if model else "") + f"--out {out}-dpo")
    state.wait_for_everyone()  # a stage run next in these processes must see the finished manifest
    return summary


def _generator_model(inputs: dict[str, Any]) -> str | None:
    """The model that drew an `aif generate` input (train the same one on its pairs); None for other inputs."""
    from aifeedback.storage.files import read_json

    manifest = Path(inputs.get("generate", "")) / "manifest.json"
    return read_json(manifest)["config"].get("model") if "generate" in inputs and manifest.is_file() else None


def scores_path(out: Path, index: int) -> Path:
    """Per-image scores of shard `index`. Not named train-*, so load_dataset("parquet", data_dir=OUT) skips them."""
    return out / SCORES_DIR / f"scores-{index:05d}.parquet"


def _write_scores(out: Path, index: int, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aifeedback.scoring.labels import scores_schema
    from aifeedback.storage.files import atomic_write_bytes

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=scores_schema()), buf)
    atomic_write_bytes(scores_path(out, index), buf.getvalue().to_pybytes())


def _clear_replaced_scores(out: Path, identity: dict, inputs: dict, overwrite: bool) -> None:
    # prepare_output removes a replaced job's data/ shards; the per-image scores must go with them.
    import shutil

    from aifeedback.storage.files import read_json
    from aifeedback.storage.manifest import MANIFEST, fingerprint

    mpath = out / MANIFEST
    if overwrite and mpath.exists():
        try:
            old = read_json(mpath).get("fingerprint")
        except (OSError, ValueError):
            old = None
        if old != fingerprint({"stage": "score", "identity": identity, "inputs": inputs}):
            shutil.rmtree(out / SCORES_DIR, ignore_errors=True)


def _resolve_dtype(cfg: ScoreConfig, device: str) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _score_phase(cfg, inp, shards, starts, todo: list[int], out: Path, state) -> None:
    """Phase 1: score this process's unfinished shards, writing each one's per-image scores atomically."""
    if not todo:
        return
    import torch

    from aifeedback.console import progress
    from aifeedback.scoring.inputs import ShardImages, ShardPlan, passthrough
    from aifeedback.scoring.scorers import load_scorer

    device = cfg.device or str(state.device)
    if device == "cuda" and state.device.type == "cuda":
        device = str(state.device)  # plain "cuda" under accelerate launch: this process's own GPU, not cuda:0
    dtype = _resolve_dtype(cfg, device)
    scorers = [load_scorer(s, device, dtype) for s in cfg.scorer]
    transforms: list = []
    for s in scorers:
        if s.transform not in transforms:  # scorers sharing a preprocessing (clip, hpsv2) share its output
            transforms.append(s.transform)
    which = [transforms.index(s.transform) for s in scorers]

    plans, owners = {}, {}
    for i in todo:
        images, owner = [], []
        for u, unit in enumerate(shards[i]):
            for slot, (row, col) in enumerate(unit.images):
                images.append((row, col, unit.prompt))
                owner.append((starts[i] + u, slot, row, col, unit.prompt_id))
        plans[i], owners[i] = ShardPlan(i, images), owner
    workers = min(cfg.workers, len(todo))
    loader = torch.utils.data.DataLoader(
        ShardImages(inp.rows, list(plans.values()), transforms, cfg.batch_size), batch_size=None,
        num_workers=workers, collate_fn=passthrough, prefetch_factor=4 if workers else None,
        pin_memory=device.startswith("cuda"),  # page-locked batches: the copy to the GPU is asynchronous
    )
    total = sum(len(p.images) for p in plans.values())
    bar = progress(total=total, unit="img", desc=f"score [{state.process_index + 1}/{state.num_processes}]",
                   enabled=cfg.progress and state.is_local_main_process)
    results = {i: {"raw": [None] * len(plans[i].images), "err": [None] * len(plans[i].images), "left": len(plans[i].images)} for i in todo}
    for chunk in loader:
        i, start, errors = chunk["shard"], chunk["start"], chunk["errors"]
        res = results[i]
        ok = [j for j, e in enumerate(errors) if e is None]
        if ok:
            prompts = [plans[i].images[start + j][2] for j in ok]
            cols = [scorer.score_items(chunk["items"][which[s]], prompts) for s, scorer in enumerate(scorers)]
            for n, j in enumerate(ok):
                res["raw"][start + j] = [float(c[n]) for c in cols]
        for j, e in enumerate(errors):
            res["err"][start + j] = e
        res["left"] -= len(errors)
        bar.update(len(errors))
        if res["left"] == 0:
            rows = [
                {"unit": u, "slot": slot, "row": row, "column": col, "prompt_id": pid, "raw": raw, "error": err}
                for (u, slot, row, col, pid), raw, err in zip(owners[i], res["raw"], res["err"])
            ]
            _write_scores(out, i, rows)
            del results[i]
    bar.close()
    if results:  # every chunk of every shard must have come back
        raise RuntimeError(f"internal error: shards {sorted(results)} were not fully scored")
