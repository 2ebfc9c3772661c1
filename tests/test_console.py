"""What the stages print: no third-party loading bars or warnings, a closing summary with the output and the next
command, --no-progress, train's checkpoint / validation lines, and no carriage returns in a non-terminal log."""

import dataclasses
import os
import sys
import textwrap
from pathlib import Path

import pytest

from aifeedback import console
from tests.launch import run_group

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Loading pipeline components", "Loading weights", "No LoRA keys", "should be kept in float32",
         "Generating train split", "it/s]")

# Every stage through the CLI in ONE process (one import of torch and diffusers), stdout and stderr sent to files as
# in CI. score, sample and eval run with --no-progress; generate and train draw their bars.
CHAIN = textwrap.dedent("""
    import sys
    from aifeedback.cli import app

    def aif(*args):
        app([str(a) for a in args], standalone_mode=False)

    root = sys.argv[1]
    open(f"{root}/p.txt", "w").write("a red cat\\na blue dog\\n")
    aif("generate", "--model", "tiny-sdxl", "--prompts", f"{root}/p.txt", "--images-per-prompt", 2, "--steps", 1,
        "--out", f"{root}/gen")
    aif("score", "--input", f"{root}/gen", "--out", f"{root}/pairs", "--scorer", "pickscore:tiny", "--workers", 0,
        "--no-progress")
    aif("train", "--data", "ai", "--dataset", f"{root}/pairs", "--model", "tiny-sdxl", "--lora-rank", 2,
        "--resolution", 16, "--max-steps", 2, "--checkpoint-every", 1, "--validation-every", 1,
        "--validation-steps", 1, "--validation-prompts", "a cat", "--validation-seeds", 0, "--num-workers", 0,
        "--trackers", "none", "--out", f"{root}/run")
    aif("export", f"{root}/run", "--out", f"{root}/lora")
    aif("sample", "--model", "tiny-sdxl", "--tuned", f"{root}/lora", "--prompts", f"{root}/p.txt", "--steps", 1,
        "--out", f"{root}/samples", "--no-progress")
    aif("eval", "--base", "tiny-sdxl", "--tuned", f"{root}/lora", "--prompts", f"{root}/p.txt", "--steps", 1,
        "--scorers", "redness", "--bootstrap", 100, "--out", f"{root}/eval", "--no-progress")
""")


@pytest.fixture(scope="module")
def chain_log(tiny_sdxl, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_VERBOSITY", "DISABLE_PROGRESS_BARS"))}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", AIF_PROGRESS_INTERVAL="")  # a user's shell, not conftest's
    env.pop("AIF_VERBOSE", None)
    with open(root / "out.txt", "w") as out, open(root / "err.txt", "w") as err:
        res = run_group([sys.executable, "-c", CHAIN, str(root)], stdout=out, stderr=err, env=env, timeout=600)
    stdout, stderr = (root / "out.txt").read_text(), (root / "err.txt").read_text()
    assert res.returncode == 0, stderr[-3000:]
    return root, stdout, stderr


def test_no_library_noise_and_no_carriage_returns_in_a_log(chain_log):
    _, stdout, stderr = chain_log
    for noise in NOISE:
        assert noise not in stdout + stderr, noise
    assert "\r" not in stderr  # a log file holds lines, not one endless redrawn bar
    assert "generate: 4/4 img (100%)" in stderr and "train: 2/2 step (100%)" in stderr  # progress as plain lines


def test_every_stage_ends_with_its_output_and_next_command(chain_log):
    root, stdout, _ = chain_log
    expected = {
        "generate": (f"-> {root}/gen", f"next: aif score --input {root}/gen"),
        "score": (f"-> {root}/pairs", f"next: aif train --data ai --dataset {root}/pairs --model tiny-sdxl"),
        "train": (f"-> {root}/run", f"next: aif eval --base tiny-sdxl --tuned {root}/run"),
        "export": (f"-> {root}/lora", f"next: aif sample --model tiny-sdxl --tuned {root}/lora"),
        "sample": (f"-> {root}/samples", f"next: open {root}/samples/grid.png"),
        "eval": (f"-> {root}/eval", f"next: open {root}/eval/report.html"),
    }
    for stage, (output, step) in expected.items():
        summary = [line for line in stdout.splitlines() if line.startswith(f"aif {stage} done:")]
        assert any(line.endswith(output) for line in summary), (stage, stdout)
        assert step in stdout, (stage, stdout)
    assert "4 images (2 prompts x 2)" in stdout and "2 preference pairs" in stdout
    # eval's own two generate runs report what they wrote but do not suggest `aif score`
    assert stdout.count("next: aif score") == 1


def test_train_names_each_checkpoint_and_validation_grid(chain_log):
    root, _, stderr = chain_log
    for step in (1, 2):
        assert f"step {step}: wrote checkpoint {root}/run/checkpoints/checkpoint-00000{step}" in stderr
        assert f"step {step}: wrote validation grid {root}/run/validation/step-00000{step}.png" in stderr


def test_no_progress_draws_no_bar(chain_log):
    _, _, stderr = chain_log
    for bar in ("score [1/1]", "sample:", "scoring:", "generate: 2/2"):  # eval's generate runs included
        assert bar not in stderr, bar


def test_every_stage_takes_no_progress_without_changing_its_identity():

    from aifeedback.stages import STAGES

    for stage, entry in STAGES.items():
        cls = entry.config
        field = {f.name: f for f in dataclasses.fields(cls)}.get("progress")
        assert field is not None and field.default is True, stage
        assert field.metadata["identity"] is False, stage  # a rerun with --no-progress resumes the same job


def test_progress_redraws_on_a_terminal_and_writes_plain_lines_otherwise(monkeypatch, capsys):
    monkeypatch.setattr(console, "interactive", lambda: True)
    bar = console.progress(total=3, desc="work", unit="img")
    bar.update(3)
    bar.close()
    assert "\r" in capsys.readouterr().err
    monkeypatch.setattr(console, "interactive", lambda: False)
    monkeypatch.setenv(console.INTERVAL_ENV, "3600")
    bar = console.progress(total=1000, desc="work", unit="img")
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix(loss=0.5)
    console.note("a line between bars")
    bar.close()
    err = capsys.readouterr().err
    # first and last state only: updates within the interval print nothing, and nothing is redrawn in place
    assert err.splitlines()[0] == "work: 0/1000 img (0%) [00:00<?, ?img/s]"
    assert err.splitlines()[1] == "a line between bars"
    assert err.splitlines()[2].startswith("work: 1000/1000 img (100%)") and len(err.splitlines()) == 3
    assert "\r" not in err
    bar = console.progress(total=5, desc="off", enabled=False)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""


def test_quiet_libraries_keeps_errors_and_aif_verbose_turns_the_noise_back_on(monkeypatch):
    import logging

    for var in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY", "DATASETS_VERBOSITY",
                "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # restored after the test
    loggers = [logging.getLogger(name) for name in console.NOISY_LIBRARIES]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.INFO)
        monkeypatch.setenv(console.VERBOSE_ENV, "1")
        console.quiet_libraries()
        assert all(lg.level == logging.INFO for lg in loggers)
        monkeypatch.delenv(console.VERBOSE_ENV)
        console.quiet_libraries()
        assert all(lg.getEffectiveLevel() == logging.ERROR for lg in loggers)  # warnings hidden, errors shown
        assert os.environ["DIFFUSERS_VERBOSITY"] == "error"  # for a library imported later
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
