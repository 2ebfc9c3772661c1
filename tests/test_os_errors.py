"""A full disk, a read-only --out, a file where --out should be: a clear error with the path and the fix (exit 2 in
the CLI, no traceback), never an OSError or torch RuntimeError traceback."""

import errno
import os
import sys

import pytest
from typer.testing import CliRunner

from aifeedback.cli import app
from aifeedback.errors import OutputWriteError
from aifeedback.preflight import check_output
from aifeedback.stages import Stage
from aifeedback.storage import publish as publish_module
from aifeedback.storage.files import atomic_write_text
from aifeedback.storage.manifest import OutputConflictError, prepare_output
from aifeedback.storage.publish import publishing
from aifeedback.storage.shards import write_shard
from tests.launch import run_group

runner = CliRunner()
# What the writers raise on a full or read-only tmpfs (seen with torch 2 and safetensors 0.4+): no errno, no path.
TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
TORCH_READ_ONLY = RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                               "Read-only file system")


class SafetensorError(Exception):
    """Like safetensors_rust.SafetensorError: a plain Exception, the OS error only in its message."""


SAFETENSORS_FULL_DISK = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_publishing_a_file_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(publish_module.os, "replace", _no_space)
    with pytest.raises(OutputWriteError, match=rf"could not write {tmp_path}/a.json: no space left on the device\. "
                                               r"Fix: free space on that disk, or choose another --out\."):
        atomic_write_text(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_a_shard_or_a_torch_checkpoint(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "write_table", _no_space)
    with pytest.raises(OutputWriteError, match=r"train-00003\.parquet: no space left"):
        write_shard(tmp_path, 3, [{"a": 1}])
    with pytest.raises(OutputWriteError, match=r"checkpoint-000010: torch could not finish .*full disk .*"
                                               r"unexpected pos.*Fix: free space"):
        with publishing(tmp_path / "checkpoint-000010", folder=True, replace=True):
            raise TORCH_FULL_DISK
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data"]


def test_a_full_disk_under_safetensors_names_the_folder(tmp_path):
    with pytest.raises(OutputWriteError, match=r"could not write .*/unet: no space left on the device \(Error while "
                                               r"serializing.*\)\. Fix: free space"):
        with publishing(tmp_path / "unet", folder=True, replace=True):
            raise SAFETENSORS_FULL_DISK


def test_other_errors_are_not_disguised_as_disk_errors(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"), publishing(tmp_path / "x"):
        raise RuntimeError("a bug")
    with pytest.raises(FileNotFoundError), publishing(tmp_path / "y"):
        raise FileNotFoundError(errno.ENOENT, "missing input", "in.txt")


def test_out_that_is_a_file_fails_in_preflight_and_in_prepare_output(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    with pytest.raises(OutputWriteError, match=r"--out .*results\.txt is a file, not a folder\. Fix: choose another"):
        check_output(f)
    with pytest.raises(OutputWriteError, match=r"cannot be made: .*results\.txt is a file"):
        check_output(f / "sub")
    with pytest.raises(OutputConflictError, match=r"results\.txt is a file, not a folder\. Fix: choose another --out"):
        prepare_output(f, "generate", {}, {})
    check_output(tmp_path / "new" / "deeper")  # a folder still to be made is fine
    assert f.read_text() == "keep me"


def test_cli_out_that_is_a_file_exits_2_before_any_heavy_import(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "out").write_text("not a folder")
    code = "import sys; from aifeedback.cli import main; sys.argv = ['aif', *sys.argv[1:]]\ntry:\n    main()\n" \
           "finally:\n    print('torch' in sys.modules, file=sys.stderr)"
    result = run_group([sys.executable, "-c", code, "generate", "--model", "tiny-sd15", "--prompts", "p.txt",
                        "--out", "out"], timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "error: --out out is a file, not a folder. Fix: choose another --out" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().endswith("False")  # torch never imported


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a 0o500 folder; the failing-writer test below "
                                               "covers the read-only case for root")
def test_read_only_out_fails_in_preflight(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputWriteError, match=rf"--out {ro}/run: cannot write in {ro} .*Fix: choose another"):
            check_output(ro / "run")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("err, message", [
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run/manifest.json"),
     "could not write /mnt/ro/run/manifest.json: the file system is read-only. Fix: choose another --out."),
    (OSError(errno.ENOSPC, "No space left on device"),
     "could not write OUT: no space left on the device. Fix: free space on that disk, or choose another --out."),
    (TORCH_FULL_DISK, "could not write OUT: torch could not finish writing it, which is how a full disk shows"),
    (TORCH_READ_ONLY, "could not write OUT: the file system is read-only ([enforce fail at inline_container.cc:747]"),
    (SAFETENSORS_FULL_DISK, "could not write OUT: no space left on the device (Error while serializing: I/O error"),
])
def test_cli_turns_a_failing_writer_into_a_clear_error(tmp_path, monkeypatch, err, message):
    """Writes outside storage/ (accelerate's save_state of a checkpoint) reach the CLI's one handler."""
    def run(self, cfg):
        raise err

    monkeypatch.setattr(Stage, "run", run)
    out = str(tmp_path / "run")
    result = runner.invoke(app, ["train", "--model", "tiny-sd15", "--out", out])
    assert result.exit_code == 2, result.output
    assert message.replace("OUT", out) in result.output


def test_cli_lets_other_errors_through(monkeypatch):
    def run(self, cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Stage, "run", run)
    result = runner.invoke(app, ["train", "--model", "tiny-sd15"])
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "a bug"


def test_a_stage_whose_disk_fills_up_exits_2_naming_the_file(tmp_path, monkeypatch, tiny_sd15):
    """End to end: `aif generate` writing its manifest onto a full disk (only its --out is full)."""
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).startswith(str(tmp_path / "gen")):
            _no_space()
        return real_replace(src, dst)

    monkeypatch.setattr(publish_module.os, "replace", replace)
    (tmp_path / "p.txt").write_text("a cat\n")
    result = runner.invoke(app, ["generate", "--model", "tiny-sd15", "--prompts", str(tmp_path / "p.txt"), "--steps",
                                 "1", "--images-per-prompt", "1", "--out", str(tmp_path / "gen"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"could not write {tmp_path}/gen/manifest.json: no space left on the device. Fix: free space" \
        in result.output
