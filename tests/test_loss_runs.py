"""Each objective beyond DPO trains end to end: a 2-step tiny run logs finite losses and starts at its step-0 value."""

import math

import pytest

from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(6))


@pytest.mark.parametrize("loss, beta, step0", [("hinge", 5000.0, 1.0), ("ipo", 100.0, (1 / 100.0) ** 2)])
def test_dpo_forms_train_from_their_step0_value(human, tmp_path, loss, beta, step0):
    from aifeedback.stages.train import run

    m = read_metrics(run(tiny_train(human, tmp_path / "run", loss=loss, beta=beta)))
    assert [r["step"] for r in m] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in m)
    # full fine-tune: the policy starts as an exact copy of the reference, so inside = 0 on every pair
    assert m[0]["loss"] == pytest.approx(step0, rel=1e-6) and m[0]["implicit_acc"] == 0.5
    assert "mse_ref_w" in m[0]


@pytest.mark.parametrize("model, rank", [("tiny-sd15", 0), ("tiny-sdxl", 4)])
def test_mapo_trains_without_any_reference(human, tmp_path, monkeypatch, model, rank):
    from aifeedback.stages.train import TrainRecipe, run

    refs = []
    setup = TrainRecipe._setup_models

    def spy(self):
        built = setup(self)
        refs.append(built[1])
        return built

    def no_reference(*args, **kwargs):
        raise AssertionError("MaPO ran a reference forward")

    import aifeedback.losses.mapo as M

    calls = []
    real = M.mapo

    def mapo_spy(*args, timesteps=None, **kwargs):
        calls.append(timesteps)
        return real(*args, timesteps=timesteps, **kwargs)

    monkeypatch.setattr(M, "mapo", mapo_spy)
    monkeypatch.setattr(TrainRecipe, "_setup_models", spy)
    monkeypatch.setattr(TrainRecipe, "_reference_mse", no_reference)
    m = read_metrics(run(tiny_train(human, tmp_path / "run", model=model, lora_rank=rank, loss="mapo", beta=0.1)))
    assert refs == [None]  # no frozen copy for a full fine-tune either
    assert calls == [1000, 1000]  # T from the tiny model's noise scheduler, one call per step
    assert [r["step"] for r in m] == [1, 2] and all(math.isfinite(r["loss"]) for r in m)
    assert "mse_ref_w" not in m[0]
    # loss = winner MSE + margin term, each a mean over the step's pairs (metrics are rounded to 8 decimals)
    assert m[0]["loss"] == pytest.approx(m[0]["mse_model_w"] + m[0]["margin_loss"], abs=1e-7)
    assert m[0]["margin_loss"] > 0  # -beta * logsigmoid(.) is positive


def test_mapo_with_the_dpo_default_beta_is_refused(human, tmp_path):
    from aifeedback.config import ConfigError

    with pytest.raises(ConfigError, match="pass --beta 0.1"):
        tiny_train(human, tmp_path / "run", loss="mapo")  # beta left at the DPO default 5000
    tiny_train(human, tmp_path / "run", loss="dpo")  # DPO keeps its default
