"""Impossible sizes and devices are refused before any model loads: a GPU that is not there, fp16 autocast on a CPU,
an image side that is no multiple of 8 or beyond MAX_SIDE."""

import pytest

from aifeedback.config import MAX_SIDE, ConfigError, build_config
from aifeedback.errors import AifError
from aifeedback.stages import STAGES


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading any pipeline fails the test: the refusal must come first."""
    import diffusers

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)


def _prompts(tmp_path):
    (tmp_path / "p.txt").write_text("a red cat\n")
    return str(tmp_path / "p.txt")


@pytest.mark.parametrize("stage,values", [
    ("generate", {"model": "tiny-sd15"}),
    ("sample", {"model": "tiny-sd15"}),
    ("eval", {"base": "tiny-sd15", "tuned": "tiny-sd15", "scorers": "redness"}),
])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_there_is_refused_first(tiny_sd15, tmp_path, no_gpu, no_model_load, stage, values, device):
    cfg = build_config(STAGES[stage].config, {**values, "prompts": _prompts(tmp_path), "device": device,
                                              "out": str(tmp_path / "out")})
    with pytest.raises(AifError, match=f"--device {device}: this machine has no GPU visible to torch. Fix: pass "
                                       "--device auto"):
        STAGES[stage].run(cfg)
    assert not (tmp_path / "out").exists()


def test_a_gpu_index_beyond_the_visible_ones_and_a_bad_name(monkeypatch):
    import torch

    from aifeedback.preflight import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    with pytest.raises(AifError, match=r"cuda:2: this machine has 2 GPU\(s\) visible \(cuda:0 to cuda:1\)"):
        check_device("cuda:2")
    with pytest.raises(AifError, match="--device gpu: not a device name"):
        check_device("gpu")


def test_fp16_training_on_a_cpu_is_refused_before_the_model_loads(tiny_sd15, tmp_path, no_gpu, no_model_load):
    from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic

    data = write_pickapic(tmp_path / "data", pickapic_rows(2))
    cfg = tiny_train(data, tmp_path / "run", max_steps=1, mixed_precision="fp16")
    with pytest.raises(AifError, match="--mixed-precision fp16: fp16 autocast needs a GPU.*bf16 or no"):
        STAGES["train"].run(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stage,field", [("generate", "resolution"), ("generate", "width"), ("sample", "resolution"),
                                         ("eval", "resolution"), ("train", "resolution"), ("cache", "resolution"),
                                         ("loop", "resolution")])
def test_impossible_image_sides_are_config_errors(stage, field):
    cls = STAGES[stage].config
    for bad, message in ((100_000, f"{field}: 100000 px is more than {MAX_SIDE}"),
                         (20, f"{field}: must be a multiple of 8, got 20")):
        with pytest.raises(ConfigError) as exc:
            build_config(cls, {field: bad})
        assert any(p.startswith(message) for p in exc.value.problems), exc.value.problems
    assert not [p for p in _problems(cls, {field: MAX_SIDE}) if p.startswith(field)]


def _problems(cls, values):
    try:
        build_config(cls, values)
    except ConfigError as e:
        return e.problems
    return []
