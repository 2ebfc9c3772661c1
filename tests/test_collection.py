"""aifeedback/collection.py: the garbage collector paused while the outermost stage imports its libraries, those
objects then frozen (later collections skip them), and no collections at exit (tests/test_cli.py)."""

import gc
import sys
import types
import weakref

import pytest

from aifeedback.collection import uncollected
from aifeedback.console import nested
from aifeedback.stages import STAGES


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


def test_uncollected_collects_the_garbage_of_before_instead_of_freezing_it(collector):
    class Node:
        pass

    gc.disable()  # a cycle that became garbage and was not collected yet
    node = Node()
    node.me = node
    dead = weakref.ref(node)
    del node
    with uncollected():
        pass
    assert dead() is None


def fake_import(seen):
    def import_module(name):
        seen["collector on while importing"] = gc.isenabled()
        seen["frozen"] = gc.get_freeze_count()
        return types.SimpleNamespace(run=lambda cfg: seen.setdefault("collector on while running", gc.isenabled()))
    return import_module


def test_a_stage_imports_its_module_with_the_collector_paused(collector, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("aifeedback.stages.importlib.import_module", fake_import(seen))
    monkeypatch.delitem(sys.modules, "aifeedback.stages.rl", raising=False)
    gc.enable()
    gc.unfreeze()
    STAGES["rl"].run(types.SimpleNamespace(out=str(tmp_path / "out"), preflight=lambda: None))
    assert seen["collector on while importing"] is False and seen["collector on while running"] is True
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("how", ["inside another stage", "module imported already"])
def test_a_stage_inside_another_or_imported_already_freezes_nothing(collector, tmp_path, monkeypatch, how):
    seen = {}
    monkeypatch.setattr("aifeedback.stages.importlib.import_module", fake_import(seen))
    if how == "module imported already":
        monkeypatch.setitem(sys.modules, "aifeedback.stages.rl", types.ModuleType("aifeedback.stages.rl"))
    else:
        monkeypatch.delitem(sys.modules, "aifeedback.stages.rl", raising=False)
    gc.enable()
    gc.unfreeze()
    cfg = types.SimpleNamespace(out=str(tmp_path / "out"), preflight=lambda: None)
    if how == "inside another stage":
        with nested():
            STAGES["rl"].run(cfg)
    else:
        STAGES["rl"].run(cfg)
    assert seen["collector on while importing"] is True and gc.get_freeze_count() == 0
