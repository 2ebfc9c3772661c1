"""One writer per output folder: a second run into a folder another run is writing is refused, with exit code 2,
before it writes anything; a killed holder (SIGKILL) does not block the rerun."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aifeedback.storage.lock import OutputBusyError, lock_path, output_lock
from tests.launch import process_group, run_group

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from aifeedback.storage.lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


@pytest.fixture
def holder(tmp_path):
    """A separate process that holds the lock on tmp_path/out until the test kills it."""
    with process_group([sys.executable, "-c", HOLDER, str(tmp_path / "out")], env=env(), stdout=subprocess.PIPE,
                       text=True) as proc:
        assert proc.stdout.readline().strip() == "locked"
        yield proc


def test_a_second_writer_is_refused_before_writing_anything(holder, tmp_path):
    out = tmp_path / "out"
    data = tmp_path / "pairs"
    data.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_group([sys.executable, "-m", "aifeedback", "train", "--dataset", str(data), "--model", "tiny-sd15",
                   "--out", str(out)], env=env(), timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    said = " ".join(r.stderr.split())  # the CLI wraps long messages
    assert str(out) in said and f"pid {holder.pid}" in said and "Fix:" in said and "another --out" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not out.exists()  # nothing written


def test_a_killed_holder_does_not_block_the_rerun(holder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):  # held: refused in this process too
        with output_lock(out):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(out).exists()  # the killed run could not clean up its lock file, but the kernel freed the lock
    with output_lock(out):
        assert f"pid {os.getpid()}" in lock_path(out).read_text()
    assert not lock_path(out).exists()  # a run that ends removes its lock file


def test_only_the_main_process_of_a_launch_takes_the_lock(holder, tmp_path, monkeypatch):
    """Under accelerate launch the ranks of one run share its output: rank 0 holds the lock, the others do not
    take it (they would be refused by their own rank 0)."""
    monkeypatch.setenv("RANK", "1")
    with output_lock(tmp_path / "out"):  # held by `holder`, yet not refused: this is not a main process
        pass
    with output_lock(tmp_path / "other"):
        assert not lock_path(tmp_path / "other").exists()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(OutputBusyError):
        with output_lock(tmp_path / "out"):
            pass


def test_the_lock_is_released_when_the_stage_fails(tmp_path):
    from aifeedback.config import build_config
    from aifeedback.errors import AifError
    from aifeedback.stages import STAGES

    cfg = build_config(STAGES["export"].config, {"checkpoint": str(tmp_path / "missing"), "out": str(tmp_path / "o")})
    for _ in range(2):  # the second run is not refused as busy: the first released the lock when it failed
        with pytest.raises(AifError) as e:
            STAGES["export"].run(cfg)
        assert not isinstance(e.value, OutputBusyError)
    assert not lock_path(tmp_path / "o").exists()


def test_a_file_system_without_locks_runs_with_a_warning(tmp_path, monkeypatch, capsys):
    import errno

    import filelock

    def no_flock(self, *args, **kwargs):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_flock)
    with output_lock(tmp_path / "out"):
        pass
    assert "cannot lock" in capsys.readouterr().err


def test_a_launched_run_is_refused_too(holder, tmp_path):
    """Under accelerate launch only rank 0 asks for the lock; its refusal ends the whole launch (torchrun stops the
    other rank, which would wait for rank 0 before writing), and nothing is written. ~2 s: rank 0 stops before torch."""
    from tests.launch import accelerate_launch

    prompts = tmp_path / "p.txt"
    prompts.write_text("a prompt\n")
    r = run_group([*accelerate_launch(2), "generate", "--model", "tiny-sd15", "--prompts", str(prompts),
                   "--steps", "1", "--out", str(tmp_path / "out")],
                  env=env(), timeout=300)
    assert r.returncode != 0 and "is being written by another run" in " ".join(r.stderr.split()), r.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_every_spelling_of_a_folder_names_one_lock(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert lock_path(tmp_path / "link") == lock_path(tmp_path / "x" / ".." / "real") == tmp_path / ".real.lock"
