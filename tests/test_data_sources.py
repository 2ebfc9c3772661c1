"""More pair sources (issue #15): HPDv2 and ImageRewardDB ranked lists, the --columns mapping of any other layout,
TRL-layout hub datasets; paths never leave the dataset folder; bad layouts name the --columns mapping that fixes
them; `aif train` 2 steps on every layout (slow); `aif inspect` and `aif score` read every layout train reads and
refuse a bad one with train's own one-line error."""

from __future__ import annotations

import io
import json

import datasets
import pytest

from aifeedback.config import ConfigError, build_config
from aifeedback.data import sources as S
from aifeedback.data.labels import winner_of
from aifeedback.data.mapping import parse_columns
from aifeedback.errors import DataError
from tests.layouts_fixtures import (
    PICKAPIC_KINDS,
    write_custom,
    write_hpdv2,
    write_hpdv3,
    write_imagereward,
    write_pickapic_as,
    write_pickapic_wds,
)

CUSTOM = {"caption": "text", "image_0": "left", "image_1": "right", "label": "winner"}


def colour(image) -> str:
    """'red', 'green' or 'blue': the dominant channel of a fixture image (encoded, or decoded as PIL; noise is +-20
    around 200 vs 40)."""
    from PIL import Image

    image = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))
    means = [sum(band.getdata()) / (band.width * band.height) for band in image.split()]
    return ("red", "green", "blue")[means.index(max(means))]


def winners(ds) -> list[str | None]:
    """Per row: the preferred image's colour, None for a tie."""
    out = []
    for r in ds:
        w = winner_of(r["label_0"], r["label_1"])
        out.append(None if w is None else colour(r[f"jpg_{w}"]))
    return out


def test_hpdv2_preferences_and_ranks_become_pairs(tmp_path):
    folder = write_hpdv2(tmp_path / "hpd")
    assert S.source_for(str(folder)).name == "hpdv2"
    train = S.open_pairs(str(folder), "train").dataset()
    assert winners(train) == ["red"] * 4 and [r["label_0"] for r in train] == [1.0, 0.0, 1.0, 0.0]  # sides kept
    assert train[0]["caption"] == "red 0"
    test = S.open_pairs(str(folder), "test", pairing="all").dataset()  # ranks green 2, red 1, blue 2: one tie each
    assert winners(test) == ["red", None, "red"] * 2
    assert winners(S.open_pairs(str(folder), "test", pairing="best-worst").dataset()) == ["red"] * 2
    assert len(S.open_pairs(str(folder / "test.json"), None).dataset()) == 6  # one annotation file
    (folder / "train" / "0-r.jpg").write_bytes((folder / "train" / "1-b.jpg").read_bytes())
    assert colour(train[0]["jpg_0"]) == "blue"  # images are read when a pair is used, never copied at open


@pytest.mark.parametrize("kind", ["paths", "image"])
def test_imagerewarddb_ranks_become_pairs_per_prompt(tmp_path, kind):
    folder = write_imagereward(tmp_path / "ir", prompts=3, kind=kind)
    assert S.source_for(str(folder)).name == "imagerewarddb"
    pairs = S.open_pairs(str(folder), "train").dataset()  # blue 2, red 1, green 2 per prompt
    assert winners(pairs) == ["red", None, "red"] * 3
    assert winners(S.open_pairs(str(folder), "train", pairing="best-worst").dataset()) == ["red"] * 3
    if kind == "paths":  # metadata-test.parquet is split test, not mixed into train
        assert len(S.open_pairs(str(folder), "test").dataset()) == 3


def test_a_ranked_record_without_numbers_is_a_bad_row_and_a_broken_one_is_named(tmp_path):
    folder = write_hpdv2(tmp_path / "hpd", n=2)
    records = json.loads((folder / "train.json").read_text())
    records[1]["human_preference"] = ["yes", "no"]
    (folder / "train.json").write_text(json.dumps(records))
    assert [winner_of(r["label_0"], r["label_1"]) for r in S.open_pairs(str(folder), "train").dataset()] == [0, "bad"]
    records[1] = {"prompt": "x", "file_path": ["a.jpg"]}
    (folder / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"train.json record 1 lacks HPDv2's keys .*it has: prompt, file_path"):
        S.open_pairs(str(folder), "train")


def test_image_paths_never_leave_the_dataset_folder(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    folder = write_hpdv2(tmp_path / "hpd", n=2)
    records = json.loads((folder / "train.json").read_text())
    records[1]["file_path"][0] = "../../secret.jpg"
    (folder / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"train.json record 1 image 0: the image path '../../secret.jpg' lies "
                                        r"outside the dataset folder"):
        S.open_pairs(str(folder), "train")  # refused when the set is opened, before any step runs
    records[1]["file_path"][0] = "missing.jpg"
    (folder / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"train.json record 1 image 0: cannot read the image path 'missing.jpg'"):
        S.open_pairs(str(folder), "train")
    custom = write_custom(tmp_path / "custom", n=2)
    import pyarrow.parquet as pq

    table = pq.read_table(custom / "pairs.parquet").to_pylist()
    table[1]["right"] = str(tmp_path / "secret.jpg")  # absolute: outside too
    pq.write_table(__import__("pyarrow").Table.from_pylist(table), custom / "pairs.parquet")
    with pytest.raises(DataError, match=r"pairs.parquet row 1 \(right\): the image path .* lies outside"):
        S.open_pairs(str(custom), columns=CUSTOM)


def test_columns_maps_a_custom_layout(tmp_path):
    folder = write_custom(tmp_path / "custom", n=4)
    table = S.open_pairs(str(folder), "train", columns=CUSTOM)
    assert table.source == "columns"
    ds = table.dataset()
    assert winners(ds) == [None, "red", "red", "red"] and ds[1]["caption"] == "blue custom 1"
    assert len(S.open_pairs(str(folder), columns={k: v for k, v in CUSTOM.items() if k != "label"},
                            labels=False).dataset()) == 4  # `aif score` relabels: no label needed


def test_score_and_eval_read_mapped_and_ranked_sets(tmp_path):
    """`aif score` (relabelling) and `aif eval --scorer-accuracy` read through the same reader, --columns and
    --ranked-pairs included."""
    from aifeedback.scoring.inputs import open_input
    from aifeedback.stages.evaluate import preference_pairs

    custom = write_custom(tmp_path / "custom")
    spec = [f"{k}={v}" for k, v in CUSTOM.items()]
    scored = open_input(str(custom), None, columns=spec)
    assert [u.prompt for u in scored.units] == [f"{w} custom {i}" for i, w in enumerate(("red", "blue", "cat", "dog"))]
    pairs = list(preference_pairs(str(custom), None, columns=spec))
    assert [p["caption"] for p in pairs] == ["blue custom 1", "cat custom 2", "dog custom 3"]  # the tie dropped
    hpd = write_hpdv2(tmp_path / "hpd")
    assert len(list(preference_pairs(str(hpd), "test", pairing="best-worst"))) == 2
    assert len(open_input(str(hpd), "test", pairing="all").units) == 6


def test_a_bad_layout_names_the_missing_columns_and_the_mapping_that_fixes_it(tmp_path):
    folder = write_custom(tmp_path / "custom")
    fix = "--columns caption=text,image_0=left,image_1=right,label=winner"
    with pytest.raises(DataError, match=r"lacks the Pick-a-Pic column\(s\) caption, jpg_0, jpg_1 \(it has: text, "
                                        rf"left, right, winner\).*Fix: pass {fix}"):
        S.open_pairs(str(folder))
    with pytest.raises(DataError, match=rf"lacks the column\(s\) image_1=rigth named by --columns \(it has: text, "
                                        rf"left, right, winner\). Fix: pass {fix}"):
        S.open_pairs(str(folder), columns=dict(CUSTOM, image_1="rigth"))
    with pytest.raises(DataError, match="maps no label"):
        S.open_pairs(str(folder), columns={k: v for k, v in CUSTOM.items() if k != "label"})


def test_a_bad_columns_spec_fails_before_anything_runs(tmp_path):
    from aifeedback.stages.train_config import TrainConfig

    assert parse_columns("caption=a, image_0=b,image_1=c,label=d") == {"caption": "a", "image_0": "b",
                                                                         "image_1": "c", "label": "d"}
    with pytest.raises(ConfigError, match=r"unknown key 'imag_0' \(did you mean image_0\?\).*missing image_0=COLUMN"):
        build_config(TrainConfig, {"columns": "caption=a,imag_0=b,image_1=c,label=d"})
    with pytest.raises(ConfigError, match="label_0 and label_1 go together"):
        build_config(TrainConfig, {"columns": ["caption=a", "image_0=b", "image_1=c", "label_0=d"]})


def test_a_trl_layout_hub_dataset_is_mapped_once_loaded(tmp_path, monkeypatch):
    from tests.pairs_fixtures import pickapic_rows

    rows = [{"prompt": r["caption"], "chosen": r["jpg_0"], "rejected": r["jpg_1"]} for r in pickapic_rows(3)]
    loaded = datasets.Dataset.from_list(rows)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None, streaming=False: loaded)
    table = S.open_pairs("org/open-image-preferences-v1-binarized", "train")
    assert table.source == "trl"
    ds = table.dataset()
    assert [(r["caption"], r["jpg_0"], r["label_0"]) for r in ds] == [(r["prompt"], r["chosen"], 1.0) for r in rows]
    loaded = loaded.add_column("side", ["chosen"] * 3)  # the label names the preferred image's column
    mapped = S.open_pairs("org/any", "train", columns={"caption": "prompt", "image_0": "rejected",
                                                       "image_1": "chosen", "label": "side"}).dataset()
    assert [(r["jpg_1"], r["label_1"]) for r in mapped] == [(r["chosen"], 1.0) for r in rows]
    loaded = datasets.Dataset.from_list([dict(r, chosen="images/0.jpg") for r in rows])  # a path: nothing to read it in
    with pytest.raises(DataError, match=r"org/paths\[train\] row 0 \(chosen\): the image is a path .*`hf download"):
        S.open_pairs("org/paths", "train")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["pickapic", "trl", "hpdv2", "imagerewarddb", "columns", "hpdv3", "webdataset"])
def test_train_two_steps_on_each_layout(tmp_path, layout):
    """`aif train` 2 steps on tiny-sd15 at 16 px from a small local dataset in each layout."""
    from aifeedback.stages import STAGES
    from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic
    from tests.test_trl import trl_rows, write_trl

    folder = tmp_path / layout
    extra = {}
    if layout == "pickapic":
        write_pickapic(folder, pickapic_rows(4))
    elif layout == "trl":
        write_trl(folder, trl_rows(4), "paths")
    elif layout == "hpdv2":
        write_hpdv2(folder)
    elif layout == "imagerewarddb":
        write_imagereward(folder)
    elif layout in ("hpdv3", "webdataset"):
        (write_hpdv3 if layout == "hpdv3" else write_pickapic_wds)(folder)
    else:
        write_custom(folder)
        extra["columns"] = ",".join(f"{k}={v}" for k, v in CUSTOM.items())
    STAGES["train"].run(tiny_train(folder, tmp_path / "run", data="human", split="train", **extra))
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m][-1] == 2


def test_no_default_or_recipe_reads_the_removed_pickapic_v2_repo():
    """yuvalkirstain/pickapic_v2 answers 404 since April 2025: neither `aif train`'s default nor a shipped recipe
    may name it (comments may say where it went)."""
    import yaml

    from aifeedback.recipe import list_recipes
    from aifeedback.stages.train_config import TrainConfig

    gone = "yuvalkirstain/pickapic_v2"
    assert TrainConfig().dataset != gone and S.source_for(TrainConfig().dataset).name == "pickapic"  # hub fallback
    for name, (path, _) in list_recipes().items():
        assert gone not in json.dumps(yaml.safe_load(path.read_text())), f"{name} reads {gone}"


def test_inspect_counts_a_dataset_and_shows_example_pairs(tmp_path):
    from aifeedback.stages import STAGES

    folder = write_imagereward(tmp_path / "ir", prompts=3)
    cfg = build_config(STAGES["inspect"].config, {"dataset": str(folder), "split": "train", "out": str(tmp_path / "o"),
                                                  "examples": 4})
    summary = STAGES["inspect"].run(cfg)
    assert (summary["source"], summary["rows"], summary["pairs"], summary["ties"], summary["bad_rows"]) == \
        ("imagerewarddb", 9, 6, 3, 0)
    assert summary["label_balance"] == {"jpg_0": 3, "jpg_1": 3}  # blue-red (red is jpg_1), red-green (red is jpg_0)
    assert json.loads((tmp_path / "o" / "summary.json").read_text()) == summary
    page = (tmp_path / "o" / "inspect.html").read_text()
    assert page.count("<div class=card>") == 4 and "preferred (jpg_" in page and "data:image/png;base64," in page


def test_inspect_runs_from_the_command_line_without_model_libraries(tmp_path):
    """`aif inspect` is a stage like the others (derived from STAGES) and loads no model code; a bad layout fails
    with the --columns fix and leaves no --out behind."""
    import sys

    from aifeedback.stages import STAGES
    from tests.launch import run_group

    folder = write_custom(tmp_path / "custom")
    fix = "caption=text,image_0=left,image_1=right,label=winner"
    with pytest.raises(DataError, match=f"--columns {fix}"):
        STAGES["inspect"].run(build_config(STAGES["inspect"].config, {"dataset": str(folder),
                                                                      "out": str(tmp_path / "o")}))
    assert not (tmp_path / "o").exists()
    code = ("import sys; from aifeedback.cli import main; sys.argv = ['aif', 'inspect'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('MODELS', [m for m in ('diffusers', 'transformers', 'open_clip') if m in sys.modules])")
    good = run_group([sys.executable, "-c", code, str(folder), "--out", str(tmp_path / "o"), "--columns", fix],
                     cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "4 rows: 3 pairs with a clear winner, 1 ties" in good.stdout and "MODELS []" in good.stdout


LAYOUTS = ["pickapic", *(f"pickapic-{k}" for k in PICKAPIC_KINDS), "trl-bytes", "trl-image", "trl-paths", "hpdv2",
           "imagerewarddb-paths", "imagerewarddb-image", "columns", "hpdv3", "webdataset"]


def write_layout(folder, layout: str) -> str | None:
    """A small dataset in `layout` (the red image preferred); returns the --columns spec it needs, or None."""
    from tests.pairs_fixtures import pickapic_rows, write_pickapic
    from tests.test_trl import trl_rows, write_trl

    kind = layout.partition("-")[2]
    if layout == "pickapic":
        write_pickapic(folder, pickapic_rows(4))
    elif layout.startswith("pickapic-"):
        write_pickapic_as(folder, kind)
    elif layout.startswith("trl-"):
        write_trl(folder, trl_rows(4), kind)
    elif layout == "hpdv2":
        write_hpdv2(folder)
    elif layout in ("hpdv3", "webdataset"):  # tests/test_hub_sources.py
        (write_hpdv3 if layout == "hpdv3" else write_pickapic_wds)(folder)
    elif layout.startswith("imagerewarddb-"):
        write_imagereward(folder, kind=kind)
    else:
        write_custom(folder)
        return ",".join(f"{k}={v}" for k, v in CUSTOM.items())
    return None


def train_reads(folder, columns: str | None, split: str = "train"):
    """What `aif train` reads, by its own calls in its order: the layout check (before the model), the table, the
    label counts."""
    from aifeedback.data import pairs as D

    S.check_layout(str(folder), False, columns)
    table = D.open_table("human", str(folder), split, columns=columns)
    return table, D.filter_labels(table)


def run_stage(name: str, folder, out, columns: str | None, split: str = "train") -> dict:
    from aifeedback.stages import STAGES

    values = {"inspect": {"dataset": str(folder), "examples": 4},
              "score": {"input": str(folder), "scorer": ["redness"], "workers": 0, "progress": False, "preview": 0}}
    extra = {"columns": columns} if columns else {}
    return STAGES[name].run(build_config(STAGES[name].config, dict(values[name], out=str(out), split=split, **extra)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inspect_and_score_read_every_layout_train_reads(tmp_path, layout):
    from aifeedback.data.images import decode_image

    folder = tmp_path / layout
    columns = write_layout(folder, layout)
    table, (pairs, stats) = train_reads(folder, columns)
    assert pairs and [colour(decode_image(table[row][f"jpg_{w}"])) for row, w in pairs] == ["red"] * len(pairs)
    seen = run_stage("inspect", folder, tmp_path / "inspect", columns)
    assert (seen["rows"], seen["pairs"], seen["ties"], seen["bad_rows"]) == \
        (stats.rows, stats.kept, stats.ties, stats.bad_labels)
    assert seen["examples"] == min(4, stats.kept) and seen["unreadable_example_images"] == 0
    assert (tmp_path / "inspect" / "inspect.html").read_text().count("<div class=card>") == seen["examples"]
    scored = run_stage("score", folder, tmp_path / "score", columns)
    assert (scored["counts"]["units"], scored["counts"]["images_failed"], scored["counts"]["bad_rows"]) == \
        (stats.rows, 0, 0)
    assert scored["human_agreement"]["redness"] == {"accuracy": 1.0, "pairs": stats.kept}  # the human labels, read


BAD = {"no layout": "lacks the Pick-a-Pic column(s) caption, jpg_0, jpg_1",
       "wrong --columns": "lacks the column(s) image_1=rigth named by --columns",
       "path outside": "the image path '../../secret.jpg' lies outside the dataset folder",
       "missing image": "cannot read the image path 'images/gone.jpg'",
       "broken file": "is not a readable Parquet file",
       "no such split": "has no files for split 'test'"}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_dataset_stops_train_inspect_and_score_with_the_same_line(tmp_path, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.pairs_fixtures import pickapic_rows, write_pickapic

    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    folder, columns, split = tmp_path / "set", None, "train"
    if case in ("no layout", "wrong --columns"):
        write_custom(folder)
        wrong = dict(CUSTOM, image_1="rigth")
        columns = None if case == "no layout" else ",".join(f"{k}={v}" for k, v in wrong.items())
    elif case in ("path outside", "missing image"):
        write_pickapic_as(folder, "paths")
        rows = pq.read_table(folder / "train.parquet").to_pylist()
        rows[1]["jpg_1"] = "../../secret.jpg" if case == "path outside" else "images/gone.jpg"
        pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    else:
        write_pickapic(folder, pickapic_rows(2))
        if case == "broken file":
            (folder / "data" / "train-00001-of-00002.parquet").write_bytes(b"not a Parquet file")
        split = "test" if case == "no such split" else split
    with pytest.raises(DataError) as e:
        train_reads(folder, columns, split)
    errors = [str(e.value)]
    for stage in ("inspect", "score"):
        with pytest.raises(DataError) as e:
            run_stage(stage, folder, tmp_path / stage, columns, split)
        errors.append(str(e.value))
        assert not (tmp_path / stage).exists()  # refused before anything is written
    assert errors == [errors[0]] * 3 and BAD[case] in errors[0] and "\n" not in errors[0]
