"""Fault injection for crash-and-rerun tests: run an `aif` command in a fresh process that SIGKILLs itself at a
named point, deterministically (no racing a timer against the work).

    python -m tests.faults TARGET NTH [GLOB] -- STAGE ARGS...

replaces the function TARGET ("module:name" or "module:Class.name") before the stage modules import it, so that
the process kills itself when the function is called for the NTH time, counting only the calls with an argument
that names a path matching GLOB when one is given. SIGKILL leaves no chance to clean up (no finally, no atexit),
as the OOM killer or a preempted node does. The patch lives in that process only: the package has no test hook.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.launch import run_group

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Fault:
    """Die on the nth call of target (among the calls naming a path that matches glob, if glob is set)."""

    target: str
    nth: int = 1
    glob: str = ""

    def argv(self) -> list[str]:
        return [self.target, str(self.nth), *([self.glob] if self.glob else [])]


# The points where a stage dies in the tests, by the moment they stand for.
MODEL_LOAD = Fault("aifeedback.families.loading:load_pipeline")
SCORER_LOAD = Fault("aifeedback.scoring.scorers:load_scorer")
SHARD_WRITE = Fault("aifeedback.storage.publish:publish", 2, "train-*.parquet")  # the 2nd shard, written, not renamed
SCORES_WRITE = Fault("aifeedback.storage.publish:publish", 2, "scores-*.parquet")
RENDER_BATCH = Fault("aifeedback.families.sampling:render", 3)  # in the 3rd batch of images
SCORE_BATCH = Fault("aifeedback.scoring.scorers.openclip:OpenClipCosine.score_items", 2)  # clip:tiny, 2nd batch
TRAIN_STEP = Fault("aifeedback.losses.base:denoising_mse", 7)  # mid-step: before the loss of a later step
# inside the 2nd checkpoint's files: each checkpoint writes rng-0, optimizer, then the weights (a full fine-tune)
CHECKPOINT_SAVE = Fault("safetensors.torch:save_file", 5, "*.safetensors")
CHECKPOINT_PUBLISH = Fault("aifeedback.storage.publish:publish", 2, "checkpoint-*")  # 2nd checkpoint, not renamed
# aif rl (tests/test_rl_faults.py): 2 updates an epoch, a checkpoint after each epoch
RL_SAMPLING = Fault("aifeedback.families.sampling:decode_latents", 3)  # epoch 2 sampling (2 minibatches an epoch)
RL_UPDATE = Fault("accelerate.accelerator:Accelerator.clip_grad_norm_", 4)  # epoch 2's 2nd update: one step taken
RL_REPORT = Fault("aifeedback.stages.rl_report:write_rl_report")  # every epoch and checkpoint done, not the report


def run_killed(fault: Fault, stage: str, args: list[str], timeout: float = 300) -> None:
    """Run `aif STAGE ARGS` in a subprocess that dies at `fault`; fail if it did not die there."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "tests.faults", *fault.argv(), "--", stage, *args]
    r = run_group(cmd, env=env, timeout=timeout)
    assert r.returncode == -signal.SIGKILL, f"{fault} did not fire (exit {r.returncode}):\n{r.stderr[-3000:]}"


def cli_args(values: dict) -> list[str]:
    """The command-line flags of a stage config's values: {"max_steps": 4} -> ["--max-steps", "4"]."""
    flags = []
    for key, value in values.items():
        flag = f"--{key.replace('_', '-')}"
        flags += ([flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)])
    return flags


def _names_match(args: tuple, kwargs: dict, glob: str) -> bool:
    paths = [a for a in (*args, *kwargs.values()) if isinstance(a, (str, os.PathLike))]
    return not glob or any(fnmatch.fnmatch(Path(p).name, glob) for p in paths)


def install(fault: Fault) -> None:
    """Replace fault.target in its module (or class) by a wrapper that SIGKILLs this process on the nth call."""
    module, _, name = fault.target.partition(":")
    *owner_path, attr = name.split(".")
    owner = importlib.import_module(module)
    for part in owner_path:
        owner = getattr(owner, part)
    original = getattr(owner, attr)
    calls = 0

    @functools.wraps(original)
    def dying(*args, **kwargs):
        nonlocal calls
        if _names_match(args, kwargs, fault.glob):
            calls += 1
            if calls == fault.nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, attr, dying)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    target, nth, *glob = argv[:split]
    install(Fault(target, int(nth), glob[0] if glob else ""))
    from aifeedback.cli import main as aif

    sys.argv = ["aif", *argv[split + 1:]]
    aif()


if __name__ == "__main__":
    main(sys.argv[1:])
