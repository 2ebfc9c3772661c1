"""The model cache notices a damaged build (a truncated or missing file) and rebuilds it, instead of failing to load
it with an error that blames the Hugging Face cache."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from aifeedback.zoo.cache import COMPLETE, cached_build, intact


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIF_CACHE", str(tmp_path))  # never damage the shared cache
    return tmp_path


class Builder:
    """A deterministic build of a weights file and a config, counting how often it runs."""

    def __init__(self):
        self.runs = 0

    def __call__(self, out):
        self.runs += 1
        (out / "sub").mkdir()
        save_file({"w": np.arange(1000, dtype=np.float32)}, str(out / "sub" / "weights.safetensors"))
        (out / "config.json").write_text('{"a": 1}')


def _truncate(path, keep=100):
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return data


def test_a_build_records_its_file_sizes_and_is_reused_while_they_hold(cache):
    build = Builder()
    folder = cached_build("fake", build)
    assert json.loads((folder / COMPLETE).read_text()) == {"files": {
        "config.json": 8, "sub/weights.safetensors": (folder / "sub" / "weights.safetensors").stat().st_size}}
    assert cached_build("fake", build) == folder and build.runs == 1


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_build_is_rebuilt(cache, damage):
    build = Builder()
    folder = cached_build("fake", build)
    weights = folder / "sub" / "weights.safetensors"
    whole = weights.read_bytes()
    if damage == "truncate":
        _truncate(weights)
    else:
        weights.unlink()
    assert not intact(folder)
    assert cached_build("fake", build) == folder and build.runs == 2
    assert weights.read_bytes() == whole and intact(folder)


def test_a_build_from_before_sizes_were_recorded_is_upgraded_or_rebuilt(cache):
    build = Builder()
    folder = cached_build("fake", build)
    (folder / COMPLETE).write_text("ok\n")  # the marker older versions wrote
    assert cached_build("fake", build) == folder and build.runs == 1  # whole weights: kept, sizes recorded
    assert "sub/weights.safetensors" in json.loads((folder / COMPLETE).read_text())["files"]
    (folder / COMPLETE).write_text("ok\n")
    _truncate(folder / "sub" / "weights.safetensors")  # shorter than its header says
    assert cached_build("fake", build) == folder and build.runs == 2 and intact(folder)


def test_a_tiny_pipeline_with_truncated_weights_is_rebuilt_and_loads(cache):
    from aifeedback.families.loading import load_pipeline
    from aifeedback.zoo import tiny_pipeline_path

    weights = tiny_pipeline_path("tiny-sd15") / "unet" / "diffusion_pytorch_model.safetensors"
    whole = _truncate(weights, keep=1000)
    pipe = load_pipeline("tiny-sd15")  # failed before with "not in the Hugging Face cache ... download"
    assert weights.read_bytes() == whole  # the deterministic build gives back the very same file
    assert pipe.unet.config.sample_size > 0


def test_an_older_build_in_a_read_only_cache_is_used_as_it_is(cache, monkeypatch):
    import errno

    from aifeedback.zoo import cache as cache_module

    build = Builder()
    folder = cached_build("fake", build)
    (folder / COMPLETE).write_text("ok\n")

    def read_only(path, obj):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cache_module, "write_json", read_only)
    assert cached_build("fake", build) == folder and build.runs == 1
