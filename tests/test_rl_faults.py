"""Kill `aif rl` while it samples, while it updates and while it writes a checkpoint (tests/faults.py), rerun the
same command, and get what an uninterrupted run gives: the same weights, and rollouts, pairs, metrics.jsonl and
report with each epoch exactly once and whole."""

import json

import pytest

from aifeedback.config import build_config
from aifeedback.stages import STAGES
from aifeedback.storage.manifest import read_manifest
from tests import faults as F
from tests.test_faults import file_bytes, same_run

VALUES = dict(model="tiny-sd3", prompts_per_epoch=2, group_size=2, steps=2, reward="redness", monitor="brightness",
              lora_rank=2, batch_size=2, resolution=32, lr=1e-2, epochs=3, progress=False)
TIMINGS = ("images_per_s", "updates_per_s")


def run_rl(values: dict, out) -> None:
    STAGES["rl"].run(build_config(STAGES["rl"].config, dict(values, out=str(out))))


def epochs(out) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, aif_cache):
    root = tmp_path_factory.mktemp("rl-faults")
    (root / "prompts.txt").write_text("a red apple\na blue car\na green tree\n")
    values = dict(VALUES, prompts=str(root / "prompts.txt"))
    run_rl(values, root / "whole")
    return values, root / "whole"


SLOW = [pytest.param(p, marks=pytest.mark.slow) for p in ("RL_SAMPLING", "CHECKPOINT_SAVE", "RL_REPORT")]  # all: slow


@pytest.mark.parametrize("point", ["RL_UPDATE", "CHECKPOINT_PUBLISH", *SLOW])
def test_rl_killed_then_rerun_equals_uninterrupted(whole, point, tmp_path):
    values, straight = whole
    out = tmp_path / "killed"
    F.run_killed(getattr(F, point), "rl", [*F.cli_args(values), "--out", str(out)])
    assert not read_manifest(out)["complete"]
    # where it died: epoch 2's sampling, epoch 2's updates (its rollouts written, its metrics line not yet), or
    # inside the 2nd checkpoint's write (epoch 2 logged; a checkpoint file or folder not yet renamed into place), or
    # after the last checkpoint, before the report and the manifest's completion
    rollouts, logged = len(file_bytes(out, "rollouts/data/*.parquet")), len(epochs(out))
    assert (rollouts, logged) == {"RL_SAMPLING": (1, 1), "RL_UPDATE": (2, 1), "RL_REPORT": (3, 3)}.get(point, (2, 2))
    assert bool([p for p in out.rglob(".*") if p.name.endswith(".tmp")]) == point.startswith("CHECKPOINT")
    run_rl(values, out)
    assert read_manifest(out)["complete"]
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")], "temporaries left behind"
    same_run(straight, out)
    assert epochs(out) == epochs(straight) and [e["epoch"] for e in epochs(out)] == [1, 2, 3]
    for pattern in ("rollouts/data/*.parquet", "pairs/data/*.parquet", "report.json"):
        assert file_bytes(out, pattern) == file_bytes(straight, pattern), pattern
    assert len(file_bytes(out, "rollouts/data/*.parquet")) == 3
