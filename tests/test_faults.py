"""Kill each stage at a named point (tests/faults.py), rerun the same command, and get what an uninterrupted run
gives: the same shard bytes, the same checkpoint tensors and metrics. The rerun goes through STAGES[name].run, so
it also takes the output lock the killed run held (the kernel released it).

The default suite kills at the points the older SIGKILL tests (test_generate, test_train, test_score) do not reach:
a shard or a checkpoint written but not yet renamed, a checkpoint half-saved. The whole matrix is slow."""

from pathlib import Path

import pytest

from aifeedback.config import build_config
from aifeedback.stages import STAGES
from aifeedback.storage.lock import lock_path
from aifeedback.storage.manifest import read_manifest
from tests import faults as F
from tests.pairs_fixtures import pickapic_rows, read_metrics, write_pickapic
from tests.test_score import make_generate_dir


def run_stage(stage: str, values: dict, out: Path) -> None:
    STAGES[stage].run(build_config(STAGES[stage].config, dict(values, out=str(out))))


def file_bytes(out: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob(pattern))}


def same_shards(whole: Path, rerun: Path) -> None:
    """Every shard (pairs and per-image scores) is byte-for-byte the uninterrupted run's."""
    for pattern in ("data/*.parquet", "image_scores/*.parquet"):
        assert file_bytes(rerun, pattern) == file_bytes(whole, pattern), pattern
    assert file_bytes(whole, "data/*.parquet")


def same_run(whole: Path, rerun: Path) -> None:
    """The last checkpoint's tensors and every logged step are the uninterrupted run's (CPU math is deterministic
    for the same inputs in the same process layout: equal, not close)."""
    import torch
    from safetensors.torch import load_file

    last = sorted(p.name for p in (whole / "checkpoints").iterdir())[-1]
    for f in sorted((whole / "checkpoints" / last).rglob("*.safetensors")):
        a, b = load_file(f), load_file(rerun / f.relative_to(whole))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    metrics = read_metrics(rerun)
    assert [r["step"] for r in metrics] == [r["step"] for r in read_metrics(whole)]  # each step logged once
    assert [r["loss"] for r in metrics] == [r["loss"] for r in read_metrics(whole)]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, tiny_sd15):
    """stage -> (its settings, the output of an uninterrupted run), each run on first use."""
    root = tmp_path_factory.mktemp("faults")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(6)) + "\n")
    make_generate_dir(root / "images", n_prompts=6, k=2, per_file=4)
    values = {
        "generate": dict(model="tiny-sd15", prompts=str(prompts), steps=2, images_per_prompt=1, resolution=32,
                         shard_size=1, batch_size=1),
        "score": dict(input=str(root / "images"), scorer="clip:tiny", shard_size=1, batch_size=2, workers=0),
        "train": dict(dataset=str(write_pickapic(root / "pairs", pickapic_rows(6))), model="tiny-sd15",
                      resolution=16, max_steps=6, batch_size=2, lr=1e-4, scale_lr=False, checkpoint_every=2,
                      validation_every=0, num_workers=0, trackers="none"),
    }

    def job(stage: str) -> tuple[dict, Path]:
        whole = root / f"whole-{stage}"
        if not whole.exists():
            run_stage(stage, values[stage], whole)
        return values[stage], whole

    return job


WRITES = {"SHARD_WRITE", "SCORES_WRITE", "CHECKPOINT_PUBLISH", "CHECKPOINT_SAVE"}
MATRIX = [  # stage, fault point, slow
    ("generate", "SHARD_WRITE", False),
    ("generate", "MODEL_LOAD", True),
    ("generate", "RENDER_BATCH", True),
    ("score", "SCORES_WRITE", False),
    ("score", "SCORER_LOAD", True),
    ("score", "SCORE_BATCH", True),
    ("score", "SHARD_WRITE", True),
    ("train", "CHECKPOINT_PUBLISH", False),
    ("train", "CHECKPOINT_SAVE", False),
    ("train", "MODEL_LOAD", True),
    ("train", "TRAIN_STEP", True),
]


@pytest.mark.parametrize("stage,point", [pytest.param(stage, point, id=f"{stage}-{point}",
                                                      marks=[pytest.mark.slow] if slow else [])
                                         for stage, point, slow in MATRIX])
def test_killed_then_rerun_equals_uninterrupted(jobs, stage, point, tmp_path):
    values, whole = jobs(stage)
    fault = getattr(F, point)
    out = tmp_path / "killed"
    F.run_killed(fault, stage, [*F.cli_args(values), "--out", str(out)])
    assert lock_path(out).exists()  # the killed run's lock file (no longer locked: the kernel freed it)
    if out.exists() and (out / "manifest.json").exists():
        assert not read_manifest(out)["complete"]
    if point in WRITES:  # killed between writing a shard or checkpoint and renaming it into place
        assert [p for p in out.rglob(".*") if p.name.endswith(".tmp")], "the kill did not land inside a write"
    run_stage(stage, values, out)  # the same command again: not refused by the lock the killed run held
    assert read_manifest(out)["complete"] and not lock_path(out).exists()
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")], "temporaries left behind"
    (same_run if stage == "train" else same_shards)(whole, out)
