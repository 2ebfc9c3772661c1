"""Shared test setup: one thread (libgomp spin-waits made small ops 100x slower on 2 shared cores), an isolated but
session-wide model cache, and the tiny pipelines built once per session."""

import os
import random

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

KERNEL_VARS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")  # CI emulates other CPUs


@pytest.fixture(scope="session", autouse=True)
def aif_cache(tmp_path_factory):
    """AIF_CACHE for the test session: $AIF_TEST_CACHE if set (reused across runs, as in CI), else a temp dir."""
    path = os.environ.get("AIF_TEST_CACHE") or str(tmp_path_factory.mktemp("aif_cache"))
    os.environ["AIF_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def tiny_sdxl(aif_cache):
    """Path of the tiny SDXL pipeline folder."""
    from aifeedback.zoo import tiny_pipeline_path

    return tiny_pipeline_path("tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sd15(aif_cache):
    """Path of the tiny SD1.5 pipeline folder."""
    from aifeedback.zoo import tiny_pipeline_path

    return tiny_pipeline_path("tiny-sd15")


@pytest.fixture(scope="session")
def toy_sd15(aif_cache):
    """Path of the pretrained toy SD1.5 pipeline folder (built and pretrained once per cache, ~1.5 min on a CPU)."""
    from aifeedback.zoo import tiny_pipeline_path

    return tiny_pipeline_path("toy-sd15")


@pytest.fixture(scope="session")
def toy_sd3(aif_cache):
    """Path of the pretrained toy SD3 (flow-matching) pipeline folder (built and pretrained once per cache)."""
    from aifeedback.zoo import tiny_pipeline_path

    return tiny_pipeline_path("toy-sd3")


def pytest_addoption(parser):
    parser.addoption("--shuffle", metavar="SEED", default=None,
                     help="run the modules, and the tests inside each module, in an order shuffled by SEED (an "
                          "integer; 'random' picks one and prints it) to find tests that depend on others")


def pytest_configure(config):
    seed = config.getoption("--shuffle")
    if seed == "random":
        seed = str(random.SystemRandom().randrange(10**6))
    if seed is not None and not seed.isdigit():
        raise pytest.UsageError(f"--shuffle {seed}: give an integer seed, or 'random'")
    config.shuffle_seed = seed


def pytest_report_header(config):
    lines = [f"CPU kernels: ATen {torch.backends.cpu.get_cpu_capability()}"
             + "".join(f", {k}={os.environ[k]}" for k in KERNEL_VARS if os.environ.get(k))]
    if config.shuffle_seed is not None:
        lines.append(f"shuffled order: --shuffle {config.shuffle_seed} repeats it")
    return lines


def pytest_terminal_summary(terminalreporter, config):
    """The shuffle seed again at the end: `-q` (make test-shuffled) hides the header."""
    if config.shuffle_seed is not None:
        terminalreporter.write_line(f"shuffled order: --shuffle {config.shuffle_seed} repeats it")


def pytest_collection_modifyitems(config, items):
    """--shuffle: a new order of the modules, and of the tests inside each (keeping a module's tests together, so
    its module-scoped fixtures are built once)."""
    if config.shuffle_seed is None:
        return
    rng = random.Random(int(config.shuffle_seed))
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(modules.values())
    rng.shuffle(groups)
    for group in groups:
        rng.shuffle(group)
    items[:] = [item for group in groups for item in group]
