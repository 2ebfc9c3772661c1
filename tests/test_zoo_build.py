"""A model build can never wait forever: a build for a process of a torch.distributed group runs in a fresh
interpreter (not multiprocessing's spawn, which re-runs the caller's unguarded `__main__`) with a timeout, and a
process waiting for another's build gives up after the same timeout; both end with an error that says what to do."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from aifeedback.errors import AifError
from aifeedback.zoo import cache as C
from aifeedback.zoo.cache import cached_build, intact
from tests.launch import alive, process_group

PIDS = "AIF_TEST_BUILDER_PIDS"  # where the builders below write their pid (the environment reaches the fresh process)


def write_build(out: Path) -> None:
    (out / "made-by.txt").write_text(f"{os.getpid()} {os.environ.get('RANK', '-')}")


def hanging_build(out: Path) -> None:
    Path(os.environ[PIDS]).write_text(str(os.getpid()))
    time.sleep(600)


def failing_build(out: Path) -> None:
    raise ValueError("this builder is broken")


@pytest.fixture
def group(tmp_path, monkeypatch):
    """A fresh cache, as seen from a process of a torch.distributed group (rank 1 of torchrun's environment)."""
    monkeypatch.setenv("AIF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "_in_process_group", lambda: True)
    monkeypatch.setenv("RANK", "1")
    return tmp_path / "cache" / "models"


def test_a_build_in_a_group_runs_in_a_fresh_single_process(group):
    folder = cached_build("fresh", write_build)
    pid, rank = (folder / "made-by.txt").read_text().split()
    assert intact(folder) and int(pid) != os.getpid() and rank == "-"
    assert cached_build("fresh", "tests.test_zoo_build:write_build") == folder  # by name too; reused


def test_a_build_that_hangs_is_stopped_with_a_clear_error(group, tmp_path, monkeypatch):
    monkeypatch.setenv(PIDS, str(tmp_path / "pid"))
    monkeypatch.setenv("AIF_BUILD_TIMEOUT", "5")
    started = time.time()
    with pytest.raises(AifError, match=r"building the offline model stuck took longer than 5 s \(AIF_BUILD_TIMEOUT\)"
                                       r".*set AIF_BUILD_TIMEOUT to more seconds"):
        cached_build("stuck", hanging_build)
    assert time.time() - started < 60
    if (tmp_path / "pid").exists():  # the builder got as far as its work (not on a machine too loaded to start it)
        assert not alive(int((tmp_path / "pid").read_text()))  # it was stopped, not left behind
    assert [p.name for p in group.iterdir()] == [".stuck.lock"]  # no half-built folder, no temporary


def test_a_failed_build_in_a_fresh_process_names_the_model(group):
    with pytest.raises(AifError, match=r"building the offline model broken in a fresh process failed \(exit code 1\)"):
        cached_build("broken", failing_build)


def test_a_builder_a_fresh_process_cannot_import_is_refused(group):
    with pytest.raises(AifError, match="offline model local .* is not a module-level function.* single process"):
        cached_build("local", lambda out: None)


_HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_waiting_for_a_build_that_never_ends_stops_with_a_clear_error(group, monkeypatch):
    import subprocess

    group.mkdir(parents=True)
    lock = group / ".slow.lock"
    with process_group([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline() == "held\n"
        monkeypatch.setenv("AIF_BUILD_TIMEOUT", "1")
        with pytest.raises(AifError, match=rf"waited 1 s \(AIF_BUILD_TIMEOUT\) for another process to finish building "
                                           rf"the offline model slow \(it holds {lock}\).*lsof"):
            cached_build("slow", write_build)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_build_timeout_is_refused(group, monkeypatch, value):
    monkeypatch.setenv("AIF_BUILD_TIMEOUT", value)
    with pytest.raises(AifError, match=rf"AIF_BUILD_TIMEOUT='{value}' is not a number of seconds above 0"):
        cached_build("any", write_build)


_UNGUARDED_LAUNCHER = """
from aifeedback.cli import main

main()  # no `if __name__ == "__main__":` guard: a spawned child that re-runs this file would start the stage again
"""


def test_two_processes_launched_from_an_unguarded_script_build_on_a_fresh_cache(tmp_path):
    """The model is built while both processes are in their group (rank 0 or 1 builds, the other waits): the build
    must neither re-run the launcher script nor wait forever (it used to hang until this test's timeout)."""
    from tests.launch import accelerate_launch, run_group

    script = tmp_path / "launcher.py"
    script.write_text(_UNGUARDED_LAUNCHER)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\na blue dog\n")
    launch = accelerate_launch(2)
    cache = tmp_path / "fresh-cache"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), AIF_CACHE=str(cache),
               OMP_NUM_THREADS="1")
    r = run_group([*launch[: launch.index("-m", 3)], str(script), "generate", "--model", "tiny-sd15", "--prompts",
                   str(prompts), "--steps", "1", "--out", str(tmp_path / "out")], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert intact(cache / "models" / f"tiny-sd15-v{C.ZOO_VERSION}")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"]
