"""tests/launch.py `run_group`: a command that fails or times out leaves no process behind, not even one that left
its process group as torchrun's ranks do."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import alive, run_group

# A launcher that starts a "rank" in a session of its own (as torchrun does), which starts a worker of its own; each
# writes its pid, then everyone sleeps far past the test's timeout, or (`fail`) the launcher fails once all run.
_LAUNCHER = """
import os, subprocess, sys, time
from pathlib import Path

folder, role = Path(sys.argv[1]), sys.argv[2]
child = {"launcher": "rank", "rank": "worker"}.get(role)
if child:
    subprocess.Popen([sys.executable, __file__, str(folder), child], start_new_session=role == "launcher")
(folder / f"{role}.tmp").write_text(str(os.getpid()))
os.replace(folder / f"{role}.tmp", folder / role)
if sys.argv[3:] == ["fail"]:
    while not ((folder / "rank").exists() and (folder / "worker").exists()):
        time.sleep(0.05)
    print("out")
    sys.exit("failed")
time.sleep(600)
"""


def _assert_dead(folder: Path, names: list[str]) -> None:
    """Every process that wrote its pid into folder/NAME has ended (the orphans are reaped by init, or the nearest
    subreaper, shortly after the kill)."""
    assert all((folder / n).exists() for n in names), "each process was running when the command ended"
    pids = [int((folder / n).read_text()) for n in names]
    deadline = time.time() + 10
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_timed_out_command_leaves_no_process_behind(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(_LAUNCHER)
    started = time.time()
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, str(script), str(tmp_path), "launcher"], timeout=5)
    assert time.time() - started < 60
    _assert_dead(tmp_path, ["launcher", "rank", "worker"])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_failing_command_leaves_no_process_behind_and_its_output_is_captured(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(_LAUNCHER)
    r = run_group([sys.executable, str(script), str(tmp_path), "launcher", "fail"], timeout=60)
    assert r.returncode == 1 and r.stdout == "out\n" and "failed" in r.stderr
    _assert_dead(tmp_path, ["launcher", "rank", "worker"])
