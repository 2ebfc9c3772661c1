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

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aifeedback.config import identity_dict, save_config, to_dict
from aifeedback.console import finish, progress, quiet_libraries
from aifeedback.dist import process_state
from aifeedback.errors import AifError
from aifeedback.scoring import labels as score_pairs
from aifeedback.scoring import scorers as registry
from aifeedback.scoring import unpaired  # module attributes: tests patch load_scorer, write_shard
from aifeedback.scoring.inputs import open_input
from aifeedback.scoring.labels import scores_schema
from aifeedback.scoring.loop import ImageGroup, TableImages, score_groups
from aifeedback.scoring.preview import PREVIEW, write_preview
from aifeedback.sharing.cards import write_dataset_card
from aifeedback.sharing.hub import push_folder
from aifeedback.stages.score_config import ScoreConfig
from aifeedback.storage import shards as storage_shards
from aifeedback.storage.files import atomic_write_bytes, read_json, write_json
from aifeedback.storage.manifest import MANIFEST, completed_output, fingerprint, finish_output, prepare_output_synced
from aifeedback.storage.publish import publishing, remove_stale
from aifeedback.storage.shards import chunks, my_shards, shard_done

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
    quiet_libraries()
    state = process_state()
    inp = open_input(cfg.input, cfg.split, cfg.limit, cfg.columns, cfg.ranked_pairs)
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
            share(out, read_json(out / "summary.json"), cfg.push_to_hub, cfg.hub_public)  # e.g. a later --push-to-hub
        return read_json(out / "summary.json")
    if state.is_main_process:
        _clear_replaced_scores(out, identity, inputs, cfg.overwrite)
        # before any process writes again
        for folder in (out / SCORES_DIR, out / storage_shards.SHARD_DIR, out / unpaired.UNPAIRED_DIR):
            remove_stale(folder)  # the temporaries a killed run left; never a complete file
    manifest = prepare_output_synced(state, out, "score", to_dict(cfg), identity, cfg.overwrite, inputs)
    if state.is_main_process:
        save_config(cfg, out / "config.yaml")

    shards = chunks(inp.units, cfg.shard_size)
    starts = [i * cfg.shard_size for i in range(len(shards))]
    mine = list(my_shards(len(shards), state.process_index, state.num_processes))
    _score_phase(cfg, inp, shards, starts, [i for i in mine if not scores_path(out, i).exists()], out, state)
    state.wait_for_everyone()

    table, combined, labels = _label_phase(cfg, inp, shards, starts, mine, out)
    state.wait_for_everyone()

    summary = score_pairs.summarize(cfg, inp, table, combined)
    if cfg.unpaired:
        summary["counts"].update(unpaired.unpaired_counts(labels))
    if state.is_main_process:
        write_json(out / "summary.json", summary)
        if cfg.preview:  # before the manifest says complete: a rerun after a failure here writes it again
            write_preview(out, cfg.preview, cfg.seed)
        finish_output(out, manifest, **summary["counts"], processes=state.num_processes)
        print(score_pairs.format_summary(summary, out))
        share(out, summary, cfg.push_to_hub, cfg.hub_public)
        model = _generator_model(inputs)
        finish("score", out, f"{summary['counts']['pairs']} preference pairs"
               + (f"; check the labels in {out / PREVIEW}" if cfg.preview else ""),
               f"aif train --data ai --dataset {out} " + (f"--model {model} " if model else "") + f"--out {out}-dpo",
               *([f"aif train --loss kto --dataset {out / unpaired.UNPAIRED_DIR} "
                  + (f"--model {model} " if model else "") + f"--out {out}-kto"] if cfg.unpaired else []))
    state.wait_for_everyone()  # a stage run next in these processes must see the finished manifest
    return summary


def _label_phase(cfg: ScoreConfig, inp: Any, shards: list, starts: list[int], mine: list[int], out: Path
                 ) -> tuple[Any, Any, dict]:
    """Every process's scores -> this process's pair shards (and unpaired rows with --unpaired); returns the scores
    table, the combined score per image and the unpaired labels."""
    table = score_pairs.load_scores(sorted((out / SCORES_DIR).glob("scores-*.parquet")), len(cfg.scorer))
    combined = score_pairs.combined_scores(table, ensemble_weights(cfg), cfg.normalize)
    labels = unpaired.image_labels(cfg, table, combined) if cfg.unpaired else {}
    for i in mine:
        if not shard_done(out, i):
            rows = score_pairs.shard_rows(cfg, inp, shards[i], starts[i], table, combined, scorer_label(cfg))
            storage_shards.write_shard(out, i, rows, schema=score_pairs.output_schema(cfg, inp))
        if cfg.unpaired and not unpaired.unpaired_path(out, i).exists():
            _write_unpaired(cfg, inp, out, i, unpaired.unpaired_rows(cfg, inp, shards[i], starts[i], table, combined,
                                                                     labels, scorer_label(cfg)))
    return table, combined, labels


def share(out: Path, summary: dict[str, Any], repo: str | None, public: bool) -> None:
    """The dataset card next to the shards, then (--push-to-hub) the upload of the complete folder."""
    write_dataset_card(out, summary)
    if repo:
        print(f"uploaded to {push_folder(out, repo, 'dataset', private=not public)}")


def _generator_model(inputs: dict[str, Any]) -> str | None:
    """The model that drew an `aif generate` input (train the same one on its pairs); None for other inputs."""
    manifest = Path(inputs.get("generate", "")) / "manifest.json"
    return read_json(manifest)["config"].get("model") if "generate" in inputs and manifest.is_file() else None


def scores_path(out: Path, index: int) -> Path:
    """Per-image scores of shard `index`. Not named train-*, so load_dataset("parquet", data_dir=OUT) skips them."""
    return out / SCORES_DIR / f"scores-{index:05d}.parquet"


def _write_scores(out: Path, index: int, rows: list[dict[str, Any]], pairwise: bool = False) -> None:

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=scores_schema(pairwise)), buf)
    atomic_write_bytes(scores_path(out, index), buf.getvalue().to_pybytes())


def _write_unpaired(cfg: ScoreConfig, inp, out: Path, index: int, rows: list[dict[str, Any]]) -> None:
    """Unpaired shard `index`, atomically; an empty one keeps the schema without a row group (see write_shard)."""
    table = pa.Table.from_pylist(rows, schema=unpaired.unpaired_schema(cfg, inp))
    with publishing(unpaired.unpaired_path(out, index), replace=True) as tmp:
        if rows:
            pq.write_table(table, tmp)
        else:
            pq.ParquetWriter(tmp, table.schema).close()


def _clear_replaced_scores(out: Path, identity: dict, inputs: dict, overwrite: bool) -> None:
    # prepare_output removes a replaced job's data/ shards; the per-image scores and unpaired rows must go with them.
    mpath = out / MANIFEST
    if overwrite and mpath.exists():
        try:
            old = read_json(mpath).get("fingerprint")
        except (OSError, ValueError):
            old = None
        if old != fingerprint({"stage": "score", "identity": identity, "inputs": inputs}):
            shutil.rmtree(out / SCORES_DIR, ignore_errors=True)
            shutil.rmtree(out / unpaired.UNPAIRED_DIR, ignore_errors=True)


def _resolve_dtype(cfg: ScoreConfig, device: str) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _score_phase(cfg, inp, shards, starts, todo: list[int], out: Path, state) -> None:
    """Phase 1: score this process's unfinished shards, writing each one's per-image scores atomically."""
    if not todo:
        return
    device = cfg.device or str(state.device)
    if device == "cuda" and state.device.type == "cuda":
        device = str(state.device)  # plain "cuda" under accelerate launch: this process's own GPU, not cuda:0
    dtype = _resolve_dtype(cfg, device)
    scorers = [registry.load_scorer(s, device, dtype) for s in cfg.served(cfg.scorer, "--scorer")]
    if registry.is_pairwise(cfg.scorer[0]):  # the only scorer then (ScoreConfig.validate): pairs judged together
        from aifeedback.scoring.pairwise import judge_units

        for i in todo:
            _write_scores(out, i, judge_units(scorers[0], shards[i], starts[i], TableImages(inp.rows),
                                              cfg.batch_size), pairwise=True)
        return
    groups = [ImageGroup(i, [[((starts[i] + u, slot, row, col, unit.prompt_id), (row, col), unit.prompt)
                              for u, unit in enumerate(shards[i]) for slot, (row, col) in enumerate(unit.images)]])
              for i in todo]
    bar = progress(total=sum(len(g.parts[0]) for g in groups), unit="img",
                   desc=f"score [{state.process_index + 1}/{state.num_processes}]",
                   enabled=cfg.progress and state.is_local_main_process)
    results: dict[int, list[dict[str, Any]]] = {i: [] for i in todo}
    workers = min(cfg.workers, len(todo))
    for scored in score_groups(groups, TableImages(inp.rows), scorers, cfg.batch_size, workers=workers,
                               pin_memory=device.startswith("cuda"), bar=bar):
        rows = results[scored.group.id]
        rows += [{"unit": u, "slot": slot, "row": row, "column": col, "prompt_id": pid, "raw": raw, "error": err}
                 for (u, slot, row, col, pid), raw, err in zip(scored.keys, scored.scores, scored.errors, strict=True)]
        if scored.done:
            _write_scores(out, scored.group.id, results.pop(scored.group.id))
    bar.close()
    if results:  # every batch of every shard must have come back
        raise RuntimeError(f"internal error: shards {sorted(results)} were not fully scored")
