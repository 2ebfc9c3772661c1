"""aifeedback/collection.py: the garbage collector paused while a stage imports its libraries and while `aif rl`
sets its models up, those objects then frozen (later collections skip them)."""

import gc
import types

import pytest

from aifeedback.collection import uncollected
from aifeedback.config import build_config
from aifeedback.stages import STAGES
from aifeedback.stages import rl as rl_stage
from aifeedback.stages.rl_config import RLConfig


@pytest.fixture()
def collector():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # the frozen objects back to the oldest generation, as before the test
    gc.enable() if enabled else gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_uncollected_pauses_the_collector_then_freezes_and_restores_it(collector, enabled):
    gc.enable() if enabled else gc.disable()
    gc.unfreeze()
    with uncollected():
        inside = gc.isenabled()
        made = [[] for _ in range(1000)]
    assert not inside and gc.get_freeze_count() >= len(made) and gc.isenabled() == enabled


def test_a_stage_imports_its_module_with_the_collector_paused(collector, tmp_path, monkeypatch):
    seen = {}

    def import_module(name):
        seen["collector on while importing"] = gc.isenabled()
        return types.SimpleNamespace(run=lambda cfg: seen.setdefault("collector on while running", gc.isenabled()))

    monkeypatch.setattr("aifeedback.stages.importlib.import_module", import_module)
    gc.enable()
    STAGES["rl"].run(types.SimpleNamespace(out=str(tmp_path / "out"), preflight=lambda: None))
    assert seen == {"collector on while importing": False, "collector on while running": True}


def test_aif_rl_sets_its_models_up_with_the_collector_paused(collector, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\n")
    cfg = build_config(RLConfig, dict(model="tiny-sd3", prompts=str(prompts), prompts_per_epoch=1, group_size=2,
                                      reward="redness", out=str(tmp_path / "run"), progress=False))
    seen = []
    for step in ("setup", "train", "cleanup"):
        monkeypatch.setattr(rl_stage.RLRecipe, step, lambda self, step=step: seen.append((step, gc.isenabled())))
    gc.enable()
    rl_stage.run(cfg)
    assert seen == [("setup", False), ("train", True), ("cleanup", True)]
