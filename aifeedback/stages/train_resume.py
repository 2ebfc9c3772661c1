"""The training run folder: which checkpoint a run continues from (and which is the last good one), whether --out
holds the same job (and what changed when it does not), and trimming metrics.jsonl back to the resumed step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from aifeedback.config import identity_dict
from aifeedback.data.labels import manifest_path
from aifeedback.errors import AifError
from aifeedback.stages.train_config import TrainConfig
from aifeedback.storage import checkpoints as ck
from aifeedback.storage.files import atomic_write_text, read_json
from aifeedback.storage.manifest import check_replaceable, completed_output, fingerprint, job_changes, read_manifest


def resume_point(cfg: TrainConfig, out: Path) -> Optional[Path]:
    """The checkpoint to continue from, or None to start fresh (see the --resume help)."""
    found = _resume_point(cfg, out)
    if found is None and cfg.overwrite:  # the run's files in --out are deleted next: never in a foreign folder
        check_replaceable(out)
    return found


def _resume_point(cfg: TrainConfig, out: Path) -> Optional[Path]:
    existing = ck.list_checkpoints(out)
    if cfg.resume == "auto":
        if existing and not same_job(cfg, out):
            if cfg.overwrite:
                return None
            raise AifError(f"{out} holds checkpoints of a different training job{changes(cfg, out)}. Use another "
                           "--out, or pass --overwrite to delete them and start over")
        return existing[-1] if existing else None
    if cfg.resume == "latest":
        if not existing:
            raise AifError(f"--resume latest: {out} has no complete checkpoint (checkpoints/checkpoint-NNNNNN). "
                           "Use --resume auto to start fresh when there is none")
        return existing[-1]
    if cfg.resume == "none":
        if existing and not cfg.overwrite:
            raise AifError(f"--resume none: {out} already holds checkpoints; pass --overwrite to delete them and start "
                           "over, or use another --out")
        return None
    return ck.resolve_checkpoint(cfg.resume)


def finished_step(cfg: TrainConfig, out: Path) -> Optional[int]:
    """The step of --out's latest checkpoint when this very run already reached --max-steps and finished, else None
    (a run resumed with a higher --max-steps trains on)."""
    if cfg.resume not in ("auto", "latest") or not completed_output(out, "train", identity_dict(cfg),
                                                                     input_fingerprint(cfg)):
        return None
    ckpts = ck.list_checkpoints(out)
    step = ck.read_state(ckpts[-1])["step"] if ckpts else -1
    return step if step >= cfg.max_steps else None


def same_job(cfg: TrainConfig, out: Path) -> bool:
    try:
        old = read_json(out / "manifest.json")
    except (OSError, ValueError):
        return False
    key = fingerprint({"stage": "train", "identity": identity_dict(cfg), "inputs": input_fingerprint(cfg)})
    return old.get("fingerprint") == key


def changes(cfg: TrainConfig, out: Path) -> str:
    """' (differs in: what changed)' between --out's recorded run and this one, or '' when nothing says."""
    try:
        changes = job_changes(read_json(out / "manifest.json"), identity_dict(cfg), input_fingerprint(cfg))
    except (OSError, ValueError):
        return ""
    return f" (differs in: {changes})" if changes else ""


def input_fingerprint(cfg: TrainConfig) -> dict:
    manifest = manifest_path(cfg.dataset)  # an unpaired/ folder of `aif score`: the output's
    if not manifest.exists():
        return {}
    found = read_manifest(manifest.parent)  # damaged: one line
    inputs = {"dataset_fingerprint": found.get("fingerprint")}
    if found.get("stage") == "rl":  # a run trained on with more epochs has more pairs under the same job
        inputs["dataset_epochs"] = (found.get("counts") or {}).get("epochs")
    return inputs


def nonfinite_error(out: Path, what: str, skip: bool = True) -> AifError:
    """The error for non-finite training numbers: what happened, the last good checkpoint (the newest whose weights
    read back finite), and how to go on."""
    ckpts = ck.list_checkpoints(out)
    good = next((c for c in reversed(ckpts) if ck.finite_weights(c)), None)
    last = "No checkpoint with finite weights was written yet"
    if good is not None:
        later = "" if good == ckpts[-1] else f" (the later {ckpts[-1].name} holds NaN or inf weights, or is damaged)"
        last = f"The last good checkpoint is {good}{later}"
        if skip:
            flags = f"--resume {good} --skip-nonfinite N" if later else "--skip-nonfinite N"
            last += f": rerun the same command with {flags} to continue from it, skipping up to N such steps"
    return AifError(f"{what}. {last}; or start over (another --out) with a lower --lr, a smaller --beta, "
                    "--max-grad-norm, or --mixed-precision bf16 instead of fp16")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (a killed run may have logged steps it never checkpointed)."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["step"] <= step:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write: it was never checkpointed
            continue
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
