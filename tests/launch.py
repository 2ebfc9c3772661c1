"""Subprocesses of the tests: `accelerate launch` command lines with N real CPU processes, and `run_group`, the one
way a test runs a command, which leaves no process behind when the command ends, fails or times out."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

GROUP_VAR = "AIF_TEST_PROCESS_GROUP"  # marks every process a test started (the environment is inherited)


def free_port() -> int:
    """A free TCP port, so parallel test runs do not collide on accelerate's default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(n: int = 2) -> list[str]:
    """The prefix of `accelerate launch -m aifeedback` with n processes.

    `--cpu` alone starts one process (it needs mpirun for more); `--multi_gpu` on a host without a GPU starts n
    torchrun processes, which the stages join as one CPU (gloo) group.
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "aifeedback"]


@contextmanager
def process_group(cmd: list[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """Popen(cmd) for the block; when the block ends (or fails) every process the command started is killed.

    "Every process" is not one process group: torchrun starts each rank in a session of its own, and a killed
    launcher leaves its ranks (and their children) to init. So each process started here carries a marker in its
    environment, which every descendant inherits whatever its session, and the cleanup kills every process that
    carries it (found in /proc; elsewhere only the new session's group is killed)."""
    token = uuid.uuid4().hex
    env = dict(popen_kwargs.pop("env", None) or os.environ, **{GROUP_VAR: token})
    with subprocess.Popen(cmd, env=env, start_new_session=True, **popen_kwargs) as proc:  # exit: close pipes, reap
        proc.group_token = token
        try:
            yield proc
        finally:
            kill_marked(token, proc)


def run_group(cmd: list[str], timeout: float = 600, check: bool = False, input: str | None = None,
              capture_output: bool = True, text: bool = True, **popen_kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) through `process_group`: on a timeout
    (subprocess.TimeoutExpired, as subprocess.run), a failure or an interrupted test, nothing that the command started
    stays alive. The command has ended when its own process has: whatever it left running is killed then.

    The output goes to temporary files, not pipes: a pipe ends only when every process holding it (a rank the
    launcher left behind) has ended, so subprocess.run waits for them until its timeout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as stdin:
        if input is not None:
            stdin.write(input.encode() if text else input)
            stdin.seek(0)
            popen_kwargs["stdin"] = stdin
        if capture_output:
            popen_kwargs.setdefault("stdout", out)
            popen_kwargs.setdefault("stderr", err)

        def written(f) -> str | bytes | None:
            if popen_kwargs.get("stdout") is not f and popen_kwargs.get("stderr") is not f:
                return None
            f.seek(0)
            data = f.read()
            return data.decode(errors="replace") if text else data

        with process_group(cmd, **popen_kwargs) as proc:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired as e:
                kill_marked(proc.group_token, proc)
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout, written(out), written(err)) from e
        result = subprocess.CompletedProcess(cmd, proc.returncode, written(out), written(err))
    if check:
        result.check_returncode()
    return result


def marker(pid: int) -> str | None:
    """The GROUP_VAR marker in a process's environment (None: no marker, no such process or not ours)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{GROUP_VAR}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode()
    return None


def marked(token: str) -> list[int]:
    """The live processes (zombies have no environment left) whose environment carries the marker token."""
    if not token or not os.path.isdir("/proc"):
        return []
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and marker(int(p.name)) == token]


def kill_marked(token: str, proc: subprocess.Popen) -> None:
    """SIGKILL the command's process group and every process carrying the marker (again, until none is left: a
    process may start another between the scan and the kill)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(50):
        pids = marked(token)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    proc.kill()  # the command itself, if it is still there (a no-op once it has been reaped)


def alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie, killed and waiting to be reaped, is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


# An `aif` launcher script without an `if __name__ == "__main__":` guard, under the start method that imports the
# caller's `__main__` in every new process (the default on macOS; Linux's forkserver from Python 3.14 does too): a
# process started that way runs the whole stage again.
SPAWNING_LAUNCHER = """
import multiprocessing

multiprocessing.set_start_method("spawn")

from aifeedback.cli import main

main()
"""


def accelerate_launch_fsdp(n: int, config: Path) -> list[str]:
    """The prefix of an FSDP `accelerate launch` of the `aif` CLI with n processes on a machine without a GPU:
    `config` (an FSDP accelerate config) through tests/fsdp_cpu.py, which explains why a patch is needed and why
    `--fsdp_sync_module_states false`."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
            str(n), "--fsdp_sync_module_states", "false", "--main_process_port", str(free_port()), "-m",
            "tests.fsdp_cpu"]
