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


# --- encodings, line ends and value types (issue #13): read as written, or refused with file, line and fix ---

def _write(tmp_path, name, data: bytes):
    f = tmp_path / name
    f.write_bytes(data)
    return str(f)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom"])
def test_byte_order_marks_name_the_encoding_and_are_not_part_of_the_prompt(tmp_path, encoding):
    text = "\ufeffcafé au lait\r\nsecond\r\n" if encoding.endswith("-bom") else "café au lait\r\nsecond\r\n"
    codec = encoding.removesuffix("-bom")
    for name, body in [("p.txt", text), ("p.csv", text.replace("café", "prompt\r\ncafé", 1)),
                       ("p.jsonl", '{"prompt": "café au lait"}\r\n{"prompt": "second"}\r\n')]:
        if encoding.endswith("-bom") and not body.startswith("\ufeff"):
            body = "\ufeff" + body
        assert texts(load_prompts(_write(tmp_path, name, body.encode(codec)))) == ["café au lait", "second"], name


def test_lines_end_only_at_lf_crlf_or_cr(tmp_path):
    # U+2028 and form feeds are characters of a prompt (str.splitlines would cut there); CR alone ends a line
    f = _write(tmp_path, "p.txt", "a cat\u2028on a mat\r\n\r\n \t \rsecond\x0cpage\rthird\n".encode())
    assert texts(load_prompts(f)) == ["a cat\u2028on a mat", "second\x0cpage", "third"]


@pytest.mark.parametrize("name, data, line", [
    ("latin1.txt", "ok\ncafé\n".encode("latin-1"), 2),
    ("latin1.csv", "prompt\nok\ncafé\n".encode("latin-1"), 3),
    ("latin1.jsonl", '{"prompt": "café"}\n'.encode("latin-1"), 1),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00", 1),
    ("nul.txt", b"ok\nbad\x00line\n", 2),
    ("nobom16.txt", "a cat\n".encode("utf-16-le"), 1),  # UTF-16 without a BOM: refused, not read as NUL-laden text
])
def test_undecodable_or_binary_files_are_refused_with_their_line(tmp_path, name, data, line):
    f = _write(tmp_path, name, data)
    with pytest.raises(DataError, match=rf"{name}, line {line}: .*Fix: save the file as UTF-8"):
        load_prompts(f)


@pytest.mark.parametrize("value, kind", [("42", "a number"), ("1.5", "a number"), ("true", "a boolean"),
                                         ('["a", "b"]', "a list"), ('{"x": 1}', "an object")])
def test_jsonl_prompt_values_that_are_not_strings_are_refused(tmp_path, value, kind):
    f = _write(tmp_path, "p.jsonl", ('{"prompt": "fine"}\n{"prompt": %s}\n' % value).encode())
    with pytest.raises(DataError, match=rf"p.jsonl, line 2: 'prompt' is {kind} .*Fix: write the prompt as a JSON"):
        load_prompts(f)


def test_jsonl_null_and_blank_values_are_empty_prompts(tmp_path):
    f = _write(tmp_path, "p.jsonl", b'{"prompt": null}\n{"prompt": "  "}\n\n  \n{"prompt": " kept "}\n')
    assert texts(load_prompts(f)) == ["kept"]


def test_csv_row_with_more_cells_than_the_header_is_refused(tmp_path):
    # an unquoted comma would silently cut the prompt at the comma
    f = _write(tmp_path, "p.csv", b"prompt,category\na dog,Animals\na cat, sitting,Animals\n")
    with pytest.raises(DataError, match=r"p.csv, line 3: 3 cells but the header has 2\. Fix: quote"):
        load_prompts(f)
    short = _write(tmp_path, "q.csv", b"prompt,category\na dog\n\n")  # a missing trailing cell is just empty
    assert texts(load_prompts(short)) == ["a dog"] and load_prompts(short)[0].category is None


def test_csv_unclosed_quote_is_refused_at_the_row_it_opens(tmp_path):
    # csv reads on to its field size limit and raised a bare _csv.Error
    f = _write(tmp_path, "p.csv", b'prompt\na cat\n"unclosed\n' + b"x\n" * 70_000)
    with pytest.raises(DataError, match=r"p.csv, line 3: not a valid table row .*Fix: close the quote"):
        load_prompts(f)


def test_tsv_quotes_are_text_as_in_partiprompts(tmp_path):
    # CSV quoting turned PartiPrompts' '"G I G G L E" painted ...' into 'G I G G L E painted ...'
    giggle = [p.text for p in load_prompts("parti") if "G I G G L E" in p.text]
    assert giggle == ['"G I G G L E" painted in thick colorful lettering as graffiti on a faded red brick wall with a '
                      'splotch of exploding white paint.']
    f = _write(tmp_path, "p.tsv", b'prompt\tcategory\n"BUZZ" on a sign\tx\na "quoted" word\ty\n')
    assert texts(load_prompts(f)) == ['"BUZZ" on a sign', 'a "quoted" word']


@pytest.mark.parametrize("name,data,where", [
    ("p.txt", b"a red cat\n\n \t \na blue dog\n", "line 2, line 3"),
    ("p.csv", b"prompt,category\na red cat,x\n\"  \",y\na blue dog,\n,z\n", "line 3, line 5"),
    ("p.jsonl", b'{"prompt": "a red cat"}\n{"prompt": null}\n{"prompt": "a blue dog"}\n{"prompt": "\\u3000 "}\n',
     "line 2, line 4"),
])
def test_empty_prompts_are_skipped_counted_and_listed(tmp_path, capsys, name, data, where):
    f = _write(tmp_path, name, data)
    assert texts(load_prompts(f)) == ["a red cat", "a blue dog"]
    assert f"note: {f}: 2 empty or whitespace-only prompt(s) skipped ({where})\n" in capsys.readouterr().err
    load_prompts(f)  # a stage reads its prompts twice: one note
    assert capsys.readouterr().err == ""


def test_a_long_list_of_empty_prompts_is_cut_short(tmp_path, capsys):
    f = _write(tmp_path, "p.txt", b"a red cat\n" + b"\n" * 25)
    assert texts(load_prompts(f)) == ["a red cat"]
    err = capsys.readouterr().err
    assert "25 empty or whitespace-only prompt(s) skipped (line 2, line 3," in err and "line 11 and 15 more)" in err


@pytest.mark.parametrize("name,data,message", [
    ("p.csv", b"prompt,category,prompt\na cat,x,a dog\n",
     r"p.csv, line 1: the header names the column 'prompt' twice \(cells 1 and 3\).*Fix: give each column"),
    ("p.tsv", b"prompt\tprompt\na cat\ta dog\n", r"p.tsv, line 1: the header names the column 'prompt' twice"),
    ("p.jsonl", b'{"prompt": "a cat"}\n{"prompt": "a cat", "prompt": "a dog"}\n',
     r"p.jsonl, line 2: the key 'prompt' is given twice in one object.*Fix: keep one"),
])
def test_a_column_or_key_given_twice_is_refused_not_guessed(tmp_path, name, data, message):
    # csv.DictReader and json.loads keep the last one silently
    with pytest.raises(DataError, match=message):
        load_prompts(_write(tmp_path, name, data))


def test_a_table_starting_with_a_blank_line_is_refused_naming_it(tmp_path):
    # the blank line was read as a header without columns: "no prompt column found ... Available columns: ."
    with pytest.raises(DataError, match=r"p.csv, line 1: empty, but a .csv file starts with its header line"):
        load_prompts(_write(tmp_path, "p.csv", b"\nprompt\na cat\n"))


def test_tsv_row_with_more_cells_than_the_header_gives_a_tsv_fix(tmp_path):
    # the fix said to quote the cell, which a .tsv cannot do (no quoting: a quote is part of the text)
    f = _write(tmp_path, "p.tsv", b"prompt\tcategory\na cat\tsitting\tAnimals\n")
    with pytest.raises(DataError, match=r"p.tsv, line 2: 3 cells but the header has 2\. Fix: a \.tsv cell cannot hold "
                                        r"a tab \(TSV has no quoting\)"):
        load_prompts(f)
