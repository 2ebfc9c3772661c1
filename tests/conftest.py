"""Shared test setup: one thread (libgomp spin-waits made small ops 100x slower on 2 shared cores), an isolated but
session-wide model cache, and the tiny pipelines built once per session."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


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
