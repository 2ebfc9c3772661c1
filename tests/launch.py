"""Command lines for multi-process tests: `accelerate launch` with N real CPU processes."""

import socket
import sys


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
