"""Evidence that each objective beyond DPO follows its labels, in the toy world (`aif demo` at its defaults): trained
on redness best-vs-worst pairs, the tuned model beats its base on at least 65% of held-out twins; trained on the same
pairs with winner and loser swapped (`aif demo --swap-labels`), it loses (under 35%). DPO has the same two tests in
tests/test_demo.py.

The demo's default sizes (64 captions x 8 candidates, 150 steps, 64 held-out captions x 4 seeds) and each loss's own
toy beta and lr (losses/__init__.py, README "Preference objectives"); the generated and scored pairs are shared by
all tests (the demo reuses them), so each test trains and evaluates once: about 20 s of CPU.
"""

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(toy_sd15, tmp_path_factory):
    return tmp_path_factory.mktemp("objectives")


@pytest.mark.parametrize("swap", [False, True], ids=["labels", "swapped"])
@pytest.mark.parametrize("loss", ["hinge", "ipo", "mapo"])
def test_objective_follows_its_labels(demo_out, loss, swap):
    from aifeedback.config import build_config
    from aifeedback.stages.demo import DemoConfig, run

    report = run(build_config(DemoConfig, {"out": str(demo_out), "loss": loss, "swap_labels": swap,
                                           "progress": False}))
    red = report["scorers"]["redness"]
    assert red["n"] == 64 * 4
    if swap:
        assert red["win_rate"] < 0.35 and red["mean_tuned"] < red["mean_base"]
    else:
        assert red["win_rate"] >= 0.65 and red["mean_tuned"] > red["mean_base"]
