"""The `aif` CLI: every command present with documented options; config errors exit cleanly."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from aifeedback.cli import STAGE_COMMANDS, app

runner = CliRunner()
COMMANDS = list(STAGE_COMMANDS) + ["models", "recipes"]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in result.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cmd):
    result = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert result.exit_code == 0, result.output
    if cmd in STAGE_COMMANDS:
        from aifeedback.config import fields

        module, cls_name, _ = STAGE_COMMANDS[cmd]
        cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
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
    result = subprocess.run([sys.executable, "-m", "aifeedback", "generate", "--recipe", str(recipe)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown key 'stepz' (did you mean 'steps'?)" in result.stderr
    assert "Traceback" not in result.stderr
