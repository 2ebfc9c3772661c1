"""Diffusion-KTO against hand computations: the loss on fixed per-image errors, its step-0 value and gradients."""

import math

import pytest
import torch

from aifeedback.losses import LOSSES
from aifeedback.losses.kto import kto


def sig(x):
    return 1 / (1 + math.exp(-x))


MODEL, REF = torch.tensor([0.30, 0.40, 0.40]), torch.tensor([0.40, 0.42, 0.40])
DESIRABLE = torch.tensor([True, False, True])


@pytest.mark.numerics
def test_kto_matches_hand_computation():
    # g = ref - model = [0.10, 0.02, 0.00]; z = max(0, mean g) = 0.04
    # margins s * beta * (g - z), beta 10: [+10 * 0.06, -10 * (-0.02), +10 * (-0.04)] = [0.6, 0.2, -0.4]
    out = kto(MODEL, REF, DESIRABLE, 10.0)
    expected = ((1 - sig(0.6)) + (1 - sig(0.2)) + (1 - sig(-0.4))) / 3
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.04, abs=1e-6)
    assert out.metrics["implicit_acc"].item() == pytest.approx(2 / 3)  # the third image sits below z
    assert out.metrics["reward_desirable"].item() == pytest.approx(0.05, abs=1e-6)  # mean of 0.10 and 0.00
    assert out.metrics["reward_undesirable"].item() == pytest.approx(0.02, abs=1e-6)
    assert out.metrics["desirable_share"].item() == pytest.approx(2 / 3)
    # separate weights: lambda_D = 2 on the desirable images, lambda_U = 1
    weighted = kto(MODEL, REF, DESIRABLE, 10.0, desirable_weight=2.0).loss.item()
    assert weighted == pytest.approx((2 * (1 - sig(0.6)) + (1 - sig(0.2)) + 2 * (1 - sig(-0.4))) / 3, abs=1e-6)


def test_the_reference_point_is_clamped_at_zero():
    # g = [-0.10, -0.02]: mean -0.06 < 0, so z = 0 and the margins are s * beta * g = [-1.0, +0.2]
    out = kto(torch.tensor([0.5, 0.5]), torch.tensor([0.4, 0.48]), torch.tensor([True, False]), 10.0)
    assert out.metrics["kl"].item() == 0.0
    assert out.loss.item() == pytest.approx(((1 - sig(-1.0)) + (1 - sig(0.2))) / 2, abs=1e-6)


@pytest.mark.numerics
def test_step0_value_is_one_half():
    m = torch.rand(6)
    out = kto(m, m.clone(), torch.tensor([True, False] * 3), 1000.0)
    assert out.loss.item() == 0.5  # g = 0, z = 0, h = sigmoid(0): exact in floating point
    assert out.metrics["implicit_acc"].item() == 0.5


@pytest.mark.numerics
def test_gradient_pulls_desirable_errors_down_and_undesirable_up_and_swaps_with_the_labels():
    model = MODEL.clone().requires_grad_(True)
    kto(model, REF, DESIRABLE, 10.0).loss.backward()
    grad = model.grad.clone()
    assert grad[0] > 0 and grad[2] > 0 and grad[1] < 0  # gradient descent lowers desirable errors
    # hand derivative of image 1 (undesirable, margin 0.2): d/de [(1 - sigmoid(-beta (g - z)))] / B with
    # dg/de = -1 and z detached: -beta * sigmoid'(0.2) / 3
    assert grad[1].item() == pytest.approx(-10 * sig(0.2) * (1 - sig(0.2)) / 3, rel=1e-5)
    model.grad = None
    kto(model, REF, ~DESIRABLE, 10.0).loss.backward()
    assert model.grad[1] > 0 and model.grad[0] < 0


def test_kto_is_registered_as_an_unpaired_loss_with_a_reference():
    assert LOSSES["kto"].unpaired and LOSSES["kto"].needs_reference
    assert not any(LOSSES[n].unpaired for n in ("dpo", "sft", "hinge", "ipo", "mapo"))
    assert LOSSES["kto"].function() is kto


# ---------------------------------------------------------------------------------------------------------------
# Training on unpaired images

def unpaired_rows(n):
    """Each pair of pickapic_rows as two unpaired rows: the red image desirable, the blue one not."""
    from tests.pairs_fixtures import pickapic_rows

    rows = []
    for r in pickapic_rows(n):
        win = 0 if r["label_0"] == 1.0 else 1
        rows += [{"caption": r["caption"], "jpg": r[f"jpg_{win}"], "desirable": True, "score": 1.0},
                 {"caption": r["caption"], "jpg": r[f"jpg_{1 - win}"], "desirable": False, "score": 0.0}]
    return rows


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("unpaired")
    pq.write_table(pa.Table.from_pylist(unpaired_rows(3)), folder / "images-00000.parquet")
    return folder


def test_kto_trains_on_single_images_from_one_half(unpaired, tmp_path, monkeypatch):
    from aifeedback.stages.train import TrainRecipe, run
    from tests.pairs_fixtures import read_metrics, tiny_train

    fed = []
    real = TrainRecipe._inputs

    def spy(self, batch):
        out = real(self, batch)
        fed.append((out[0].shape[0], batch["desirable"].tolist()))
        return out

    monkeypatch.setattr(TrainRecipe, "_inputs", spy)
    m = read_metrics(run(tiny_train(unpaired, tmp_path / "run", loss="kto", beta=1000.0, batch_size=3)))
    assert [r["step"] for r in m] == [1, 2] and all(math.isfinite(r["loss"]) for r in m)
    # full fine-tune: the policy starts as an exact copy of the reference, so g = 0 and the loss is 1/2
    assert m[0]["loss"] == pytest.approx(0.5, abs=1e-7) and m[0]["implicit_acc"] == 0.5 and m[0]["kl"] == 0.0
    assert {"mse_model", "mse_ref", "reward_desirable", "reward_undesirable"} <= set(m[0])
    assert [n for n, _ in fed] == [3, 3]  # one image per example (groups=1), not winner + loser
    assert sum(len(d) for _, d in fed) == 6 and {v for _, d in fed for v in d} <= {True, False}


def test_pairs_with_kto_and_unpaired_images_with_dpo_are_refused_with_the_fix(unpaired, tmp_path):
    from aifeedback.data.pairs import open_table
    from aifeedback.errors import DataError
    from tests.pairs_fixtures import pickapic_rows, write_pickapic

    pairs = write_pickapic(tmp_path / "pairs", pickapic_rows(2))
    with pytest.raises(DataError, match=r"holds preference pairs .*Fix: score with `aif score --unpaired`.*--loss "
                                        r"dpo, sft"):
        open_table("human", str(pairs), "train", unpaired=True)
    with pytest.raises(DataError, match=r"holds unpaired images .*Fix: .*--loss kto"):
        open_table("human", str(unpaired), "train")
    assert len(open_table("human", str(unpaired), "train", unpaired=True)) == 6  # read in place: ParquetRows


def test_bad_desirable_flags_are_counted_and_streaming_is_refused(tmp_path):
    import datasets

    from aifeedback.config import ConfigError
    from aifeedback.data.unpaired import filter_desirable
    from tests.pairs_fixtures import tiny_train

    ds = datasets.Dataset.from_dict({"desirable": [True, None, False, True]})
    keep, stats = filter_desirable(ds)
    assert keep == [(0, 1), (2, 0), (3, 1)] and stats.bad_labels == 1
    assert "3 images kept (2 desirable, 1 undesirable), 1 rows with a bad desirable flag" in stats.summary("d")
    assert "row 1: desirable=None" in stats.summary("d")
    with pytest.raises(ConfigError, match="drop --streaming"):
        tiny_train(tmp_path, tmp_path / "run", loss="kto", streaming=True)


# ---------------------------------------------------------------------------------------------------------------
# Evidence in the toy world

@pytest.mark.slow  # ~75 s wall on 2 busy cores: one generate + score, two 60-step KTO runs and their evals
def test_kto_on_redness_labels_makes_held_out_images_redder_and_swapped_labels_less_red(toy_sd15, tmp_path):
    """The demo's toy loop with `aif score --unpaired` (desirable: the redder half of each prompt's 8 images) and
    Diffusion-KTO instead of DPO pairs; then the same with every label flipped. Measured (seed 0): tuned wins
    100% of the 128 held-out twins on redness, swapped 2.3%."""
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from aifeedback.config import build_config
    from aifeedback.stages import STAGES
    from aifeedback.stages.demo import DemoConfig, stage_configs, write_prompts

    cfg = DemoConfig(out=str(tmp_path), prompts=32, eval_prompts=32, eval_seeds=4, progress=False)
    configs = stage_configs(cfg)
    write_prompts(cfg)
    STAGES["generate"].run(configs["generate"])
    summary = STAGES["score"].run(build_config(type(configs["score"]), {**vars(configs["score"]), "unpaired": True}))
    assert summary["counts"]["images_desirable"] == summary["counts"]["images_undesirable"] == 32 * 4
    unpaired = tmp_path / "pairs" / "unpaired"
    swapped = tmp_path / "swapped" / "unpaired"  # with the score manifest above it: its stored latents are used too
    swapped.mkdir(parents=True)
    shutil.copy(unpaired.parent / "manifest.json", swapped.parent)
    for f in sorted(unpaired.glob("*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.set_column(t.schema.get_field_index("desirable"), "desirable",
                                    pc.invert(t.column("desirable"))), swapped / f.name)
    win = {}
    for name, data in (("kto", unpaired), ("swapped", swapped)):
        # lr 1e-4 (between the demo's 5e-5 and test_demo's 3e-4): a large effect in 60 steps; beta as the official
        train = {**vars(configs["train"]), "dataset": str(data), "loss": "kto", "beta": 1000.0, "lr": 1e-4,
                 "max_steps": 60, "checkpoint_every": 60, "batch_size": 16, "out": str(tmp_path / f"{name}-run")}
        run_dir = STAGES["train"].run(build_config(type(configs["train"]), train))
        report = STAGES["eval"].run(build_config(type(configs["eval"]), {**vars(configs["eval"]), "tuned": str(run_dir),
                                                                        "out": str(tmp_path / f"{name}-eval")}))
        win[name] = report["scorers"]["redness"]["win_rate"]
    assert win["kto"] >= 0.65 and win["swapped"] < 0.35, win


def test_train_refuses_pairs_for_kto_before_loading_the_model(tmp_path, monkeypatch):
    from aifeedback.errors import DataError
    from aifeedback.stages.train import TrainRecipe, run
    from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic

    def no_setup(self):
        raise AssertionError("the model was loaded before the layout check")

    monkeypatch.setattr(TrainRecipe, "setup", no_setup)
    pairs = write_pickapic(tmp_path / "pairs", pickapic_rows(2))
    with pytest.raises(DataError, match="holds preference pairs"):
        run(tiny_train(pairs, tmp_path / "run", loss="kto"))
