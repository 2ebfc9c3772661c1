"""Where a loop is: its round folders and which of their stages have finished, read from the folders themselves.

OUT/round-NN/STAGE for STAGE in ROUND_STAGES. A stage counts as finished when its output says so: a complete
manifest of that stage (generate, score, train, eval: each marks its manifest complete as its last act), or, for
export, the pipeline folder itself (published atomically: it exists only when whole). There is no separate loop
state that could disagree with the folders, so a killed loop resumes at the first unfinished stage.
Light (no torch): pure bookkeeping over files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from aifeedback.storage.files import read_json
from aifeedback.storage.manifest import MANIFEST

ROUND_STAGES = ("generate", "score", "train", "export", "eval")  # the order a round runs them in
PIPELINE_FILE = "model_index.json"  # what makes the export folder a whole diffusers pipeline


def round_dir(out: str | Path, r: int) -> Path:
    """OUT/round-NN (rounds count from 1)."""
    if r < 1:
        raise ValueError(f"rounds count from 1, got {r}")
    return Path(out) / f"round-{r:02d}"


def stage_dir(out: str | Path, r: int, stage: str) -> Path:
    """OUT/round-NN/STAGE."""
    if stage not in ROUND_STAGES:
        raise ValueError(f"unknown round stage '{stage}'; valid: {', '.join(ROUND_STAGES)}")
    return round_dir(out, r) / stage


def stage_done(folder: str | Path, stage: str) -> bool:
    """Whether `folder` holds a finished output of `stage`."""
    folder = Path(folder)
    if stage == "export":
        return (folder / PIPELINE_FILE).is_file()
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError):  # missing, or torn by a kill: not finished
        return False
    return manifest.get("stage") == stage and manifest.get("complete") is True


def position(out: str | Path, rounds: int) -> Optional[tuple[int, str]]:
    """The first (round, stage) of rounds 1..`rounds` that has not finished, or None when all have."""
    for r in range(1, rounds + 1):
        for stage in ROUND_STAGES:
            if not stage_done(stage_dir(out, r, stage), stage):
                return r, stage
    return None


def finished_rounds(out: str | Path) -> list[int]:
    """The rounds 1, 2, ... whose every stage has finished, up to the first that has not."""
    done, r = [], 1
    while all(stage_done(stage_dir(out, r, s), s) for s in ROUND_STAGES):
        done.append(r)
        r += 1
    return done


def policy(out: str | Path, base: str, r: int) -> str:
    """The model round r samples from: the base in round 1, then round r-1's exported pipeline."""
    return base if r == 1 else str(stage_dir(out, r - 1, "export"))
