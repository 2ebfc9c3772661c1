"""Paths at the edges: an output never overlaps its stage's inputs, and a job is the same job however its paths are
spelt (`./s/` or `s`, `./p.txt` or /abs/p.txt); a job whose inputs changed is refused saying what changed."""

import os
import sys
from pathlib import Path

import pytest

from aifeedback.config import build_config
from aifeedback.errors import AifError
from aifeedback.preflight import OutputOverlapError
from aifeedback.stages import STAGES
from aifeedback.storage.manifest import OutputConflictError
from tests.launch import run_group
from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic
from tests.test_rerun import forbid_models, said_complete  # noqa: F401 (a fixture)
from tests.test_score import cfg as score_cfg
from tests.test_score import make_generate_dir

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_checkpoint(run: Path) -> Path:
    """A LoRA training checkpoint as far as names go (the refusals come before any weight is read)."""
    ckpt = run / "checkpoints" / "checkpoint-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "pytorch_lora_weights.safetensors").write_bytes(b"")
    return ckpt


# --- outputs never touch inputs -------------------------------------------------------------------------------


def test_cli_score_into_its_own_input_exits_2_and_leaves_it_whole(tmp_path):
    """`aif score --input G --out G --overwrite` deleted G's shards before reading them."""
    make_generate_dir(tmp_path / "g")
    before = snapshot(tmp_path / "g")
    args = ["score", "--input", "g", "--out", "./g/", "--overwrite", "--scorer", "redness"]
    result = run_group([sys.executable, "-m", "aifeedback", *args], timeout=120,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2, result.stderr
    assert f"--out ./g/ is the input --input {(tmp_path / 'g').resolve()}" in result.stderr
    assert "Fix: choose an --out outside" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(tmp_path / "g") == before


@pytest.mark.parametrize("out, how", [("g", "is"), ("./g/", "is"), ("link", "is"), ("link/pairs", "lies inside"),
                                      ("g/pairs", "lies inside"), (".", "contains")])
def test_score_out_overlapping_its_input_is_refused(tmp_path, monkeypatch, out, how):
    """An --out inside G made later readers of G take the output's Parquet files for input rows."""
    monkeypatch.chdir(tmp_path)
    make_generate_dir(tmp_path / "g")
    (tmp_path / "link").symlink_to(tmp_path / "g")
    before = snapshot(tmp_path / "g")
    with pytest.raises(OutputOverlapError, match=f"--out {out} {how} the input --input"):
        STAGES["score"].run(score_cfg(input="g", out=out, scorer=["redness"], overwrite=True))
    assert snapshot(tmp_path / "g") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "link"]


def test_train_over_its_dataset_is_refused(tmp_path):
    """`aif train --dataset S --out S --overwrite` replaced S's manifest: S was no longer training data."""
    make_generate_dir(tmp_path / "g")
    STAGES["score"].run(score_cfg(input=str(tmp_path / "g"), out=str(tmp_path / "s"), scorer=["redness"]))
    before = snapshot(tmp_path / "s")
    with pytest.raises(OutputOverlapError, match="is the input --dataset"):
        STAGES["train"].run(tiny_train(tmp_path / "s", tmp_path / "s", data="ai", overwrite=True))
    assert snapshot(tmp_path / "s") == before


@pytest.mark.parametrize("stage, values, out, how", [
    ("generate", dict(model="tiny-sd15", prompts="OUT/p.txt"), "OUT", "contains the input --prompts"),
    ("generate", dict(model="tiny-sd15", prompts="parti", tuned="RUN"), "RUN/gen", "lies inside the input --tuned"),
    ("train", dict(dataset="HUMAN", model="tiny-sd15"), "HUMAN", "is the input --dataset"),
    ("train", dict(dataset="HUMAN", model="tiny-sd15", resume="CKPT"), "CKPT/more", "lies inside the input --resume"),
    ("export", dict(checkpoint="CKPT"), "RUN", "contains the input --checkpoint"),
    ("sample", dict(model="tiny-sd15", tuned="RUN"), "RUN/", "is the input --tuned"),
    ("eval", dict(base="tiny-sd15", tuned="CKPT", prompts="OUT/p.txt"), "OUT", "contains the input --prompts"),
    ("eval", dict(scorer_accuracy="HUMAN", scorers="redness"), "HUMAN/acc", "lies inside the input --scorer-accuracy"),
])
def test_every_stage_refuses_an_out_overlapping_an_input(tmp_path, stage, values, out, how):
    run = tmp_path / "run"
    ckpt = fake_checkpoint(run)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p.txt").write_text("a red cat\n")
    write_pickapic(tmp_path / "human", pickapic_rows(4))
    names = {"OUT": tmp_path / "out", "RUN": run, "CKPT": ckpt, "HUMAN": tmp_path / "human"}

    def place(value):
        for name, path in names.items():
            value = value.replace(name, str(path))
        return value

    before = snapshot(tmp_path)
    cfg = build_config(STAGES[stage].config, {**{k: place(v) for k, v in values.items()}, "out": place(out)})
    with pytest.raises(OutputOverlapError, match=how):
        STAGES[stage].run(cfg)
    assert snapshot(tmp_path) == before


def test_train_may_resume_from_its_own_checkpoint(tmp_path):
    """--resume RUN/checkpoints/checkpoint-N with --out RUN continues that run: not an overlap."""
    ckpt = fake_checkpoint(tmp_path / "run")
    data = write_pickapic(tmp_path / "human", pickapic_rows(4))
    tiny_train(data, tmp_path / "run", resume=str(ckpt)).preflight()  # raises on an overlap


# --- run identity survives rewording ----------------------------------------------------------------------------


def test_score_rerun_with_reworded_paths_is_complete(tmp_path, monkeypatch, capsys, forbid_models):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    make_generate_dir(tmp_path / "g")
    first = STAGES["score"].run(score_cfg(input=str(tmp_path / "g"), out="s", scorer=["redness"]))
    capsys.readouterr()
    forbid_models()
    again = STAGES["score"].run(score_cfg(input="g/", out="./s/", scorer=["redness"]))
    assert again == first
    said_complete(capsys, "s", f"{first['counts']['pairs']} pairs")


def test_generate_rerun_with_reworded_paths_is_complete_and_new_prompts_say_so(tmp_path, monkeypatch, capsys,
                                                                              tiny_sd15, forbid_models):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a red cat\na blue dog\n")
    fast = dict(model="tiny-sd15", images_per_prompt=1, steps=1, resolution=16)
    from aifeedback.stages.generate import GenerateConfig

    STAGES["generate"].run(build_config(GenerateConfig, dict(fast, prompts=str(tmp_path / "p.txt"), out="s")))
    capsys.readouterr()
    forbid_models()
    STAGES["generate"].run(build_config(GenerateConfig, dict(fast, prompts="./p.txt", out="./s/")))
    said_complete(capsys, "s", "2 images")
    with (tmp_path / "p.txt").open("a") as f:
        f.write("a green tree\n")
    with pytest.raises(OutputConflictError, match="input n_prompts: 2 -> 3"):
        STAGES["generate"].run(build_config(GenerateConfig, dict(fast, prompts="p.txt", out="s")))


def test_train_rerun_with_reworded_paths_is_complete(tmp_path, monkeypatch, capsys, forbid_models):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    write_pickapic(tmp_path / "h", pickapic_rows(6))
    STAGES["train"].run(tiny_train("h", "run", max_steps=1, checkpoint_every=1))
    capsys.readouterr()
    forbid_models()
    STAGES["train"].run(tiny_train("h/", "./run/", max_steps=1, checkpoint_every=1))
    said_complete(capsys, "run", "step 1 of --max-steps 1; raise it to train on")
    with pytest.raises(AifError, match=r"different training job \(differs in: seed: 0 -> 1\)"):
        STAGES["train"].run(tiny_train("h", "run", max_steps=1, checkpoint_every=1, seed=1))
