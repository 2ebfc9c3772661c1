"""A rerun of a finished stage says so, naming its output, and loads no model (no pipeline, no scorer)."""

import pytest

from aifeedback.config import build_config
from aifeedback.storage.manifest import OutputConflictError
from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic


@pytest.fixture
def forbid_models(monkeypatch):
    """Call it after the first run: from then on, every way a stage loads a model raises (the pipeline and scorer
    loaders, and diffusers itself)."""
    import diffusers

    import aifeedback.families.loading
    import aifeedback.scoring.scorers

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"a model was loaded: {name}{args[:1]}")

        return call

    def forbid():
        for owner, name in ((aifeedback.families.loading, "load_pipeline"), (aifeedback.scoring.scorers, "load_scorer"),
                            (diffusers.DiffusionPipeline, "from_pretrained"),
                            (diffusers.UNet2DConditionModel, "from_pretrained")):
            monkeypatch.setattr(owner, name, refuse(name))

    return forbid


def said_complete(capsys, out, what: str) -> None:
    printed = capsys.readouterr().out
    assert f"already complete: {out} ({what})" in printed, printed


def test_generate(tmp_path, tiny_sd15, capsys, forbid_models):
    from aifeedback.stages.generate import GenerateConfig, run

    cfg = build_config(GenerateConfig, dict(model="tiny-sd15", prompts="parti", limit=2, images_per_prompt=2,
                                            steps=1, resolution=16, out=str(tmp_path / "gen")))
    run(cfg)
    capsys.readouterr()
    forbid_models()
    assert run(cfg) == tmp_path / "gen"
    said_complete(capsys, tmp_path / "gen", "4 images")
    with pytest.raises(OutputConflictError, match="seed"):  # another job is still refused, not taken for finished
        run(build_config(GenerateConfig, {**vars(cfg), "seed": 1}))


def test_sample(tmp_path, tiny_sd15, capsys, forbid_models):
    from aifeedback.stages.sample import SampleConfig, run

    cfg = build_config(SampleConfig, dict(model="tiny-sd15", prompts="parti", limit=2, steps=1, resolution=16,
                                          grid_cell=16, out=str(tmp_path / "sample")))
    paths = run(cfg)
    capsys.readouterr()
    forbid_models()
    assert run(cfg) == paths
    said_complete(capsys, tmp_path / "sample", "2 images")
    paths[0].unlink()  # a lost image is not finished work: the rerun wants the model again
    with pytest.raises(AssertionError, match="a model was loaded"):
        run(cfg)


def test_score(tmp_path, capsys, forbid_models):
    from aifeedback.stages.score import run
    from tests.test_score import cfg as score_cfg
    from tests.test_score import make_generate_dir

    make_generate_dir(tmp_path / "gen")
    cfg = score_cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer=["pickscore:tiny"])
    first = run(cfg)
    capsys.readouterr()
    forbid_models()
    assert run(cfg) == first
    said_complete(capsys, tmp_path / "pairs", f"{first['counts']['pairs']} pairs")


def test_train(tmp_path, capsys, forbid_models):
    from aifeedback.stages.train import run

    data = write_pickapic(tmp_path / "human", pickapic_rows(6))
    cfg = tiny_train(data, tmp_path / "run", max_steps=1, checkpoint_every=1)
    run(cfg)
    capsys.readouterr()
    forbid_models()
    assert run(cfg) == tmp_path / "run"
    said_complete(capsys, tmp_path / "run", "step 1 of --max-steps 1; raise it to train on")
    with pytest.raises(AssertionError, match="a model was loaded"):  # a higher --max-steps trains on
        run(tiny_train(data, tmp_path / "run", max_steps=2, checkpoint_every=1))


def test_eval(tmp_path, tiny_sd15, capsys, forbid_models):
    from aifeedback.stages.evaluate import run
    from tests.test_evaluate import _cfg

    cfg = _cfg(tmp_path / "eval", "tiny-sd15", tiny_sd15 / "unet", limit=2, seeds_per_prompt=1,
               scorers="redness,pickscore:tiny")
    report = run(cfg)
    capsys.readouterr()
    forbid_models()
    assert run(cfg) == report
    said_complete(capsys, tmp_path / "eval", "2 comparisons")
    with pytest.raises(AssertionError, match="load_scorer"):  # other scorers: the images are reused and rescored
        run(_cfg(tmp_path / "eval", "tiny-sd15", tiny_sd15 / "unet", limit=2, seeds_per_prompt=1,
                 scorers="pickscore:tiny"))


def test_scorer_accuracy(tmp_path, capsys, forbid_models):
    from aifeedback.stages.evaluate import EvalConfig, run
    from tests.test_evaluate import score_output

    cfg = build_config(EvalConfig, dict(scorer_accuracy=str(score_output(tmp_path)), scorers="pickscore:tiny",
                                        bootstrap=100, out=str(tmp_path / "acc")))
    result = run(cfg)
    capsys.readouterr()
    forbid_models()
    assert run(cfg) == result
    said_complete(capsys, tmp_path / "acc", f"{result['n_pairs']} pairs")
