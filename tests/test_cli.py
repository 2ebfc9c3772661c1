"""The `aif` CLI: every command present with documented options; config errors exit cleanly."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from aifeedback.cli import app
from aifeedback.stages import STAGES
from tests.launch import run_group

runner = CliRunner()
COMMANDS = list(STAGES) + ["models", "recipes"]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in result.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cmd):
    result = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert result.exit_code == 0, result.output
    if cmd in STAGES:
        from aifeedback.config import fields

        cls = STAGES[cmd].config
        assert "--recipe" in result.output
        for f, _ in fields(cls):
            if not f.metadata.get("positional"):
                assert "--" + f.name.replace("_", "-") in result.output, f"{cmd}: --{f.name} missing from --help"
            assert f.metadata["help"], f"{cmd}.{f.name} has no help text"


def test_models_lists_tiny_names():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "tiny-sdxl" in result.output and "tiny-sd15" in result.output


def test_config_error_exits_2_without_traceback(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("generate:\n  stepz: 3\n")
    result = run_group([sys.executable, "-m", "aifeedback", "generate", "--recipe", str(recipe)], timeout=60)
    assert result.returncode == 2
    assert "unknown key 'stepz' (did you mean 'steps'?)" in result.stderr
    assert "Traceback" not in result.stderr


def _help_text(cmd: str) -> str:
    """`aif CMD --help` as one line: rich's box borders and wrapping collapsed, so a wrapped phrase still matches."""
    result = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_help_shows_each_option_type_and_default():
    text = _help_text("train")
    for expected in ("[float; default: 5000.0]", "[int; default: 2000]", "[dpo|sft|hinge|ipo|mapo|kto; default: dpo]",
                     "[list of str (comma-separated); default: a photo of a cat wearing a red hat,",
                     "[str or null; default: null]", "[bool; default: true]",
                     "[tensorboard|wandb|none; default: tensorboard]"):
        assert expected in text, f"train --help lacks {expected!r}"
    for cmd, stage in STAGES.items():
        from aifeedback.config import fields

        text = _help_text(cmd)
        cls = stage.config
        for f, _ in fields(cls):
            help_start = " ".join(f.metadata["help"].split()) + " ["
            assert help_start in text and "; default: " in text.split(help_start, 1)[1][:300], f"{cmd} --{f.name}"


def test_choices_print_as_typed_and_are_accepted():
    from aifeedback.config import build_config
    from aifeedback.stages.generate import GenerateConfig
    from aifeedback.stages.train import TrainConfig

    train, generate = _help_text("train"), _help_text("generate")
    assert "--data human|ai " in train and "--mixed-precision no|fp16|bf16 " in train
    assert "--dtype auto|float32|float16|bfloat16 " in generate  # a str field with choices, not a Literal
    for text in (train, generate):
        assert "HUMAN" not in text and "FLOAT16" not in text and "DPO|SFT" not in text
    for choice in "no|fp16|bf16".split("|"):  # what --help shows is what the config takes
        assert build_config(TrainConfig, {"mixed_precision": choice}).mixed_precision == choice
    for choice in "auto|float32|float16|bfloat16".split("|"):
        assert build_config(GenerateConfig, {"dtype": choice}).dtype == choice


def test_version(monkeypatch):
    import importlib.metadata

    import aifeedback

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"aif {importlib.metadata.version('aifeedback')}\n"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)  # run from a checkout, never installed
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"aif {aifeedback.__version__}\n"


# Runs `aif ARGS` in a fresh interpreter and reports which heavy libraries it had imported when it exited.
_RUN_AND_REPORT_IMPORTS = """
import sys
from aifeedback.cli import main
sys.argv = ["aif", *sys.argv[1:]]
try:
    main()
finally:
    heavy = [m for m in ("torch", "diffusers", "accelerate", "transformers", "datasets") if m in sys.modules]
    print("heavy imports:", ",".join(heavy) or "none", file=sys.stderr)
"""


@pytest.mark.parametrize("args, message", [
    (["generate", "--model", "no-such-model"], "Could not load model 'no-such-model'"),
    (["generate", "--model", "tiny-sd15", "--prompts", "missing.txt"], "prompt file missing.txt does not exist"),
    (["score", "--input", "org/data", "--out", "OUT", "--scorer", "pikscore"], "Did you mean 'pickscore'?"),
    (["score", "--input", "org/data", "--out", "OUT", "--scorer", "hpsv2:./HPS.pt"], "./HPS.pt does not exist"),
    (["score", "--input", "./missing", "--out", "OUT", "--scorer", "redness"], "dataset './missing' (--input): it is "
                                                                               "neither"),
    (["train", "--model", "no-such-model"], "Could not load model 'no-such-model'"),
    (["train", "--model", "tiny-sd15", "--data", "ai", "--dataset", "OUT"], "--data ai needs an `aif score` output"),
    (["train", "--model", "tiny-sd15", "--resume", "OUT/checkpoint-000009"], "is neither a training checkpoint"),
    (["export", "CKPT", "--pipeline", "--model", "no-such-model"], "Could not load base model 'no-such-model'"),
    (["export", "OUT"], "is neither a training checkpoint"),
    (["sample", "--model", "no-such-model"], "Could not load model 'no-such-model'"),
    (["eval", "--base", "no-such-model", "--tuned", "CKPT"], "Could not load base model 'no-such-model'"),
    (["eval", "--scorer-accuracy", "./missing", "--scorers", "redness"], "dataset './missing' (--scorer-accuracy): it "
                                                                         "is"),
    (["demo", "--scorer", "rednes"], "Did you mean 'redness'?"),
])
def test_bad_names_fail_before_heavy_imports(tmp_path, args, message):
    """Each stage checks its names first: exit 2 with the fix, and torch / diffusers never imported (they alone take
    seconds; a model load minutes)."""
    ckpt = tmp_path / "checkpoint-000001"
    ckpt.mkdir()
    (ckpt / "pytorch_lora_weights.safetensors").write_bytes(b"")  # a LoRA checkpoint as far as names go
    args = [a.replace("OUT", str(tmp_path / "out")).replace("CKPT", str(ckpt)) for a in args]
    result = run_group([sys.executable, "-c", _RUN_AND_REPORT_IMPORTS, *args],
                       timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "heavy imports: none" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    written = [p.name for p in tmp_path.iterdir() if p != ckpt]  # default --out folders are relative to cwd
    assert not written, f"wrote {written} before failing"


@pytest.mark.parametrize("flags, module, extra", [
    (["--trackers", "wandb"], "wandb", "wandb"),
    (["--optimizer", "adamw8bit"], "bitsandbytes", "bnb"),
])
def test_missing_optional_package_fails_before_training(monkeypatch, tmp_path, flags, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # find_spec -> None: not installed, whatever this machine has
    result = runner.invoke(app, ["train", "--model", "tiny-sd15", *flags, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"{' '.join(flags)} needs the '{module}' package" in result.output
    assert f"pip install 'aifeedback[{extra}]'" in result.output
    assert not any(tmp_path.iterdir()), "nothing may be written before the check"


def test_wandb_extra_is_declared():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert any(req.startswith("wandb") for req in project["optional-dependencies"]["wandb"])


# Runs `aif --version` with an exit handler registered before it, so it runs after aif's: whether the objects alive at
# exit were frozen (the interpreter's final garbage collections skip them).
_REPORT_FROZEN_AT_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
from aifeedback.cli import main
sys.argv = ["aif", "--version"]
main()
"""


def test_aif_exits_without_the_final_garbage_collections():
    out = subprocess.run([sys.executable, "-c", _REPORT_FROZEN_AT_EXIT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "frozen at exit: True" in out.stdout
