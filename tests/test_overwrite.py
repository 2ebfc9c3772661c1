"""--overwrite replaces aifeedback's own outputs only: a non-empty folder without an aifeedback manifest (for export:
without its model card) is refused and left as it was."""

import pytest

from aifeedback.errors import AifError
from aifeedback.stages import STAGES
from aifeedback.storage.manifest import OutputConflictError, prepare_output
from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic


def _foreign(folder, *names):
    """A folder someone else wrote: files at `names` (relative paths) with known contents."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"mine: {name}")
    return {name: f"mine: {name}" for name in names}


def _intact(folder, files):
    assert {n: (folder / n).read_text() for n in files} == files


def test_prepare_output_refuses_a_foreign_folder_even_with_overwrite(tmp_path):
    # it used to write its manifest into the folder and the stage its shards (data/train-*.parquet) over the user's
    files = _foreign(tmp_path, "notes.txt", "data/train-00000.parquet")
    for overwrite in (False, True):
        with pytest.raises(OutputConflictError, match="is not an aifeedback output .*--overwrite does not replace it"):
            prepare_output(tmp_path, "generate", {}, {"a": 1}, overwrite=overwrite)
    _intact(tmp_path, files)
    assert not (tmp_path / "manifest.json").exists()


def test_score_overwrite_refuses_a_foreign_folder(tmp_path):
    from tests.test_score import cfg, make_generate_dir

    make_generate_dir(tmp_path / "gen", latents=False)
    files = _foreign(tmp_path / "pairs", "notes.txt")
    with pytest.raises(OutputConflictError, match="not an aifeedback output"):
        STAGES["score"].run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer="redness",
                                overwrite=True))
    _intact(tmp_path / "pairs", files)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from aifeedback.stages.train import run

    root = tmp_path_factory.mktemp("lora_run")
    data = write_pickapic(root / "data", pickapic_rows(2))
    return run(tiny_train(data, root / "run", lora_rank=2, max_steps=1, checkpoint_every=1))


def test_train_overwrite_never_deletes_the_checkpoints_of_a_foreign_folder(lora_run, tmp_path):
    files = _foreign(tmp_path / "theirs", "checkpoints/checkpoint-000001/weights.bin", "notes.txt")
    cfg = tiny_train(lora_run.parent / "data", tmp_path / "theirs", lora_rank=2, max_steps=1, overwrite=True,
                     resume="none")
    with pytest.raises(OutputConflictError, match="not an aifeedback output .*deletes nothing there"):
        STAGES["train"].run(cfg)
    _intact(tmp_path / "theirs", files)


def test_export_overwrite_replaces_an_export_but_never_a_foreign_folder(lora_run, tmp_path):
    from aifeedback.config import build_config

    def export(out, overwrite):
        cfg = build_config(STAGES["export"].config, {"checkpoint": str(lora_run), "out": str(out),
                                                     "overwrite": overwrite})
        return STAGES["export"].run(cfg)

    files = _foreign(tmp_path / "home", "thesis.tex", "photos/cat.jpg")
    with pytest.raises(AifError, match="already exists and is not empty"):
        export(tmp_path / "home", False)
    with pytest.raises(AifError, match=r"--overwrite .*home: not an aifeedback export \(no README.md model card"):
        export(tmp_path / "home", True)
    _intact(tmp_path / "home", files)
    first = export(tmp_path / "export", False)
    (first / "stale.txt").write_text("from before")
    assert not (export(tmp_path / "export", True) / "stale.txt").exists()  # an export of ours is replaced
