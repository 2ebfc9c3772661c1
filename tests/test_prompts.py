"""Prompt sources: files, datasets, the built-in PartiPrompts; ids, dedupe, limits and clear errors."""

import json

import pytest

from aifeedback.data.prompts import Prompt, load_prompts, prompt_id
from aifeedback.errors import DataError


def texts(prompts):
    return [p.text for p in prompts]


def test_txt_drops_empty_and_repeated_lines_with_stable_ids(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red cat\n\n   \n a blue dog \na red cat\nsunset\n")
    prompts = load_prompts(str(f))
    assert texts(prompts) == ["a red cat", "a blue dog", "sunset"]
    assert all(isinstance(p, Prompt) and p.meta == {} and p.category is None for p in prompts)
    assert prompts[0].prompt_id == prompt_id("a red cat") and len(prompts[0].prompt_id) == 16
    assert len({p.prompt_id for p in prompts}) == 3
    kept = load_prompts(str(f), dedupe=False)
    assert texts(kept) == ["a red cat", "a blue dog", "a red cat", "sunset"]
    assert kept[0].prompt_id == prompts[0].prompt_id and kept[2].prompt_id == prompts[0].prompt_id + "-1"  # own seeds
    assert texts(load_prompts(str(f), limit=2)) == ["a red cat", "a blue dog"]
    # the id is a function of the text only, whatever the file
    other = tmp_path / "q.txt"
    other.write_text("sunset\n")
    assert load_prompts(str(other))[0].prompt_id == prompts[2].prompt_id


def test_jsonl_csv_tsv_columns_and_category(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text(
        "\n".join(json.dumps(r) for r in [{"caption": "a", "category": "Animals"}, {"caption": "b"}, {"caption": ""}])
    )
    prompts = load_prompts(str(j))  # default column: caption
    assert texts(prompts) == ["a", "b"] and prompts[0].category == "Animals" and prompts[1].category is None
    c = tmp_path / "p.csv"
    c.write_text('id,text_en,Category\n1,"a cat, sitting",Animals\n2,a dog,Animals\n')
    assert texts(load_prompts(str(c), column="text_en")) == ["a cat, sitting", "a dog"]
    t = tmp_path / "p.tsv"
    t.write_text("Prompt\tCategory\nx\tA\ny\tB\n")
    assert [(p.text, p.category) for p in load_prompts(str(t))] == [("x", "A"), ("y", "B")]


def test_parti_is_shipped_with_categories():
    prompts = load_prompts("parti")
    assert len(prompts) == 1632
    assert prompts[0].text == "bond" and prompts[0].category == "Abstract"
    assert len({p.category for p in prompts}) == 12
    assert texts(load_prompts("parti", limit=5)) == texts(prompts[:5])


def test_local_datasets_folders(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"caption": ["a", "b", "a", ""], "jpg_0": [b"x", b"y", b"z", b"w"]})
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    assert texts(load_prompts(str(tmp_path / "pq"))) == ["a", "b"]
    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([1])})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert texts(load_prompts(str(tmp_path / "saved"), split="validation")) == ["b"]
    with pytest.raises(DataError, match="several splits: train, validation.*--split"):
        load_prompts(str(tmp_path / "saved"))
    with pytest.raises(DataError, match="no split 'test'"):
        load_prompts(str(tmp_path / "saved"), split="test")
    with pytest.raises(DataError, match="no column 'prompt'. Available columns: caption, jpg_0"):
        load_prompts(str(tmp_path / "pq"), column="prompt")


@pytest.mark.parametrize("content, suffix, column, message", [
    (None, ".txt", None, "does not exist"),
    ("", ".txt", None, "is empty"),
    ("\n  \n\n", ".txt", None, "holds no prompts"),
    ('{"prompt": "a"}\nnot json\n', ".jsonl", None, r"line 2: not valid JSON"),
    ('{"text": "a"}\n', ".jsonl", "prompt", "no column 'prompt'. Available columns: text"),
    ("a,b\n1,2\n", ".csv", None, "no prompt column found.*Available columns: a, b.*--prompt-column"),
    ("a,b\n1,2\n", ".csv", "c", "no column 'c'. Available columns: a, b"),
    ("x", ".md", None, "unknown format '.md'"),
])
def test_bad_files_name_the_problem(tmp_path, content, suffix, column, message):
    f = tmp_path / f"prompts{suffix}"
    if content is not None:
        f.write_text(content)
    with pytest.raises(DataError, match=message):
        load_prompts(str(f), column=column)


def test_unreadable_datasets(tmp_path):
    with pytest.raises(DataError, match="could not read dataset 'no-such-user/no-such-dataset'"):
        load_prompts("no-such-user/no-such-dataset")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-00000.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="dataset"):
        load_prompts(str(bad))
