"""Every file a stage writes gets the mode open() gives under the user's umask, so colleagues on a shared machine can
read exported weights, checkpoints, shards and reports (mkstemp and safetensors would leave them 0600)."""

import os
import stat

import pytest
from safetensors.torch import save_file

from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def file_modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_stage_outputs_are_readable_by_others(umask_022, tiny_sd15, tmp_path):
    from aifeedback.config import build_config
    from aifeedback.stages.export import ExportConfig
    from aifeedback.stages.export import run as export
    from aifeedback.stages.generate import GenerateConfig
    from aifeedback.stages.generate import run as generate
    from aifeedback.stages.score import ScoreConfig
    from aifeedback.stages.score import run as score
    from aifeedback.stages.train import run as train

    (tmp_path / "p.txt").write_text("a red cat\n")
    generate(build_config(GenerateConfig, dict(model="tiny-sd15", prompts=str(tmp_path / "p.txt"),
                                               out=str(tmp_path / "gen"), steps=1, images_per_prompt=2, resolution=16)))
    score(build_config(ScoreConfig, dict(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer="redness",
                                         workers=0, progress=False)))
    data = write_pickapic(tmp_path / "data", pickapic_rows(2))
    run = train(tiny_train(data, tmp_path / "run", lora_rank=2, max_steps=1, checkpoint_every=1))
    export(build_config(ExportConfig, dict(checkpoint=str(run), out=str(tmp_path / "lora"))))

    for stage in ("gen", "pairs", "run", "lora"):
        modes = file_modes(tmp_path / stage)
        assert any(name.endswith((".parquet", ".safetensors")) for name in modes), (stage, modes)
        assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}, stage


def test_cached_models_are_readable_by_others(umask_022, tmp_path, monkeypatch):
    import torch

    from aifeedback.zoo.cache import cached_build

    monkeypatch.setenv("AIF_CACHE", str(tmp_path / "cache"))

    def build(out):
        out.mkdir(parents=True, exist_ok=True)  # cached_build hands the builder an empty folder
        save_file({"w": torch.zeros(2)}, str(out / "model.safetensors"))

    assert set(file_modes(cached_build("perm-test", build)).values()) == {0o644}
