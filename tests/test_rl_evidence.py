"""`aif rl` in the toy world: on toy-sd3 (flow) and toy-sd15 (UNet, DDPO's DDIM form) each algorithm trained on
redness beats its base on >= 90% of held-out twins (`aif eval`'s protocol: held-out captions, the same seed for base
and tuned, at the run's own --guidance-scale), and trained on the negated reward (redness:-1) it loses. Fidelity is
reported in the assertion messages (it is the reward-hacking monitor, not a requirement). Settings:
bench/rl_compare.py (RL, SETTINGS); the runs behind them: bench/RESULTS.md "aif rl in the toy world"."""

import pytest

from bench.rl_compare import SETTINGS, rl_vs_base

pytestmark = pytest.mark.slow


def described(r):
    red, fid = r["redness"], r["fidelity"]
    return (f"redness win rate {100 * red['win_rate']:.1f}% (n={red['n']}), mean {red['mean_base']:.3f} -> "
            f"{red['mean_tuned']:.3f}; fidelity {100 * fid['mean_base']:.1f}% -> {100 * fid['mean_tuned']:.1f}%; "
            f"{r['seconds']:.0f}s; settings {r['settings']}")


@pytest.mark.parametrize(("model", "algorithm"), list(SETTINGS))
def test_rl_on_redness_beats_the_base_and_on_negated_redness_loses(model, algorithm, tmp_path, request):
    request.getfixturevalue(model.replace("-", "_"))  # the toy model, built once into the shared cache
    up = rl_vs_base(model, algorithm, tmp_path / "up")
    print(f"{model} {algorithm} redness: {described(up)}")
    assert up["redness"]["n"] >= 64
    assert up["redness"]["win_rate"] >= 0.9, described(up)
    down = rl_vs_base(model, algorithm, tmp_path / "down", reward="redness:-1")
    print(f"{model} {algorithm} redness:-1: {described(down)}")
    assert down["redness"]["win_rate"] <= 0.1, described(down)
