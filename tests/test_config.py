"""Config validation: unknown keys with suggestions, bad types and ranges, all reported at once; recipes."""

from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from aifeedback.config import ConfigError, build_config, identity_dict, option
from aifeedback.recipe import load_stage_config


@dataclass
class DemoCfg:
    lr: float = option(1e-4, "learning rate", min=0.0)
    steps: int = option(10, "steps", min=1)
    name: str = option("x", "a name")
    mode: Literal["a", "b"] = option("a", "mode")
    scorers: list[str] = option(["pickscore"], "scorers")
    weights: list[float] = option([], "weights")
    vae: Optional[str] = option(None, "vae")
    flag: bool = option(False, "a flag")
    batch_size: int = option(4, "batch", min=1, identity=False)


def test_defaults_and_coercion():
    cfg = build_config(DemoCfg, {"lr": "2e-5", "steps": "3", "scorers": "a, b,c", "weights": "1,0.5", "flag": "true",
                                 "vae": "null", "batch-size": 8})
    assert cfg.lr == 2e-5 and cfg.steps == 3 and cfg.scorers == ["a", "b", "c"] and cfg.weights == [1.0, 0.5]
    assert cfg.flag is True and cfg.vae is None and cfg.batch_size == 8
    assert build_config(DemoCfg, {}).scorers == ["pickscore"]
    assert build_config(DemoCfg, {}).scorers is not build_config(DemoCfg, {}).scorers  # no shared mutable default


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        build_config(DemoCfg, {"lrr": 1.0, "steps": "many", "mode": "c", "lr": -1, "flag": "maybe"}, "my.yaml")
    msg = str(exc.value)
    assert len(exc.value.problems) == 5
    assert "my.yaml" in msg
    assert "unknown key 'lrr' (did you mean 'lr'?)" in msg
    assert "steps: expected an integer" in msg
    assert "mode: must be one of a, b" in msg
    assert "lr: must be >= 0.0" in msg
    assert "flag: expected true/false" in msg


def test_int_rejects_fraction_and_bool():
    for bad in (1.5, True):
        with pytest.raises(ConfigError, match="steps"):
            build_config(DemoCfg, {"steps": bad})


def test_identity_excludes_runtime_settings():
    cfg = build_config(DemoCfg, {"batch_size": 2})
    assert "batch_size" not in identity_dict(cfg) and "lr" in identity_dict(cfg)


def test_recipe_sections_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# test recipe\ntrain:\n  lr: 3.0e-6\n  steps: 5\n")
    cfg = load_stage_config(DemoCfg, "train", str(recipe), {"steps": "7", "name": None})
    assert cfg.lr == 3e-6 and cfg.steps == 7 and cfg.name == "x"
    with pytest.raises(ConfigError, match="no 'score' section"):
        load_stage_config(DemoCfg, "score", str(recipe), {})
    recipe.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_stage_config(DemoCfg, "train", str(recipe), {})
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        load_stage_config(DemoCfg, "train", "no_such_recipe", {})


def test_values_of_the_wrong_shape_are_config_errors_listed_at_once(tmp_path):
    # a list or a mapping where a number or a string is expected gave a TypeError traceback from int()/float()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  steps: [1, 2]\n  lr: {a: 1}\n  name: [a, b]\n  weights: [1, [2]]\n  mode: [a]\n"
                      "  vae: {x: 1}\n  7: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_stage_config(DemoCfg, "train", str(recipe), {})
    msg = str(exc.value)
    assert f"7 problem(s) in {recipe} [train]" in msg
    assert "steps: expected an integer, got a list ([1, 2]) (type: int)" in msg
    assert "lr: expected a number, got a mapping ({'a': 1}) (type: float)" in msg
    assert "name: expected a string, got a list (['a', 'b']) (type: str)" in msg
    assert "weights: expected a number, got a list ([2])" in msg
    assert "mode: must be one of a, b" in msg and "vae: expected a string, got a mapping" in msg
    assert "unknown key '7'" in msg


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\xff", "train:\n  name: café\n".encode("latin-1")])
def test_binary_or_non_utf8_recipe_is_a_config_error(tmp_path, data):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(data)
    with pytest.raises(ConfigError, match=r"1 problem\(s\) in .*r\.yaml:\n  - not UTF-8 text.*save it as UTF-8"):
        load_stage_config(DemoCfg, "train", str(recipe), {})


def test_recipe_with_a_byte_order_mark_loads(tmp_path):
    recipe = tmp_path / "r.yaml"
    for codec in ("utf-8-sig", "utf-16"):
        recipe.write_bytes("train:\n  name: café\n".encode(codec))
        assert load_stage_config(DemoCfg, "train", str(recipe), {}).name == "café"


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "1e999", float("nan"), float("inf"),
                                 pytest.param(10 ** 400, id="10**400")])
def test_nan_and_infinity_are_refused_for_every_float(bad):
    # NaN guidance rendered as if guidance were off, infinite guidance black images, both with exit 0
    with pytest.raises(ConfigError) as exc:
        build_config(DemoCfg, {"lr": bad, "weights": ["1", bad]})
    assert "lr: must be a finite number" in str(exc.value) or "lr: expected a number" in str(exc.value)
    assert len(exc.value.problems) == 2


def test_nan_and_infinity_in_a_recipe_and_on_a_stage_option(tmp_path):
    from aifeedback.stages.generate_config import GenerateConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: .nan\n  weights: [.inf]\n")
    with pytest.raises(ConfigError, match=r"lr: must be a finite number \(not NaN or infinity\), got nan"):
        load_stage_config(DemoCfg, "train", str(recipe), {})
    for value in ("nan", "inf"):
        with pytest.raises(ConfigError, match="guidance: must be a finite number"):
            build_config(GenerateConfig, {"guidance": value})


def test_error_messages_never_quote_a_long_value_whole(tmp_path):
    huge = "9" * 100_000
    with pytest.raises(ConfigError) as exc:
        build_config(DemoCfg, {"steps": huge + "x", "flag": huge, "mode": huge, "lr": [huge] * 1000, huge: 1,
                               "scorers": {"a": huge}})
    assert len(exc.value.problems) == 6 and len(str(exc.value)) < 1200
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train:\n  steps: 1\n{'x' * 1000}: 1\n")  # YAML's longest plain key
    with pytest.raises(ConfigError, match="unknown section 'xxxx") as exc:
        load_stage_config(DemoCfg, "train", str(recipe), {})
    assert len(str(exc.value)) < 400


def test_duplicate_keys_and_sections_are_errors_naming_both_lines(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# a recipe\ntrain:\n  lr: 1.0e-5\n  steps: 3\n  lr: 2.0e-5\nscore:\n  x: 1\n"
                      "train:\n  steps: 4\n")
    with pytest.raises(ConfigError) as exc:
        load_stage_config(DemoCfg, "train", str(recipe), {})
    assert exc.value.problems == [
        "key 'lr' is given twice (lines 3 and 5); PyYAML would keep the last one silently. Fix: keep one of them",
        "section 'train' is given twice (lines 2 and 8); PyYAML would keep the last one silently. Fix: keep one of "
        "them"]


def test_a_yaml_value_of_another_type_for_text_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  name: yes\n  vae: 1.5\n  scorers: [pickscore, on]\n")
    with pytest.raises(ConfigError) as exc:
        load_stage_config(DemoCfg, "train", str(recipe), {})
    assert [p.split(",")[0] for p in exc.value.problems] == [
        "name: expected text", "scorers: expected text", "vae: expected text"]
    assert "got True (YAML reads unquoted yes/no/on/off as a boolean" in exc.value.problems[0]
    recipe.write_text("train:\n  name: 'yes'\n  vae: \"1.5\"\n  scorers: [pickscore, 'on']\n")
    cfg = load_stage_config(DemoCfg, "train", str(recipe), {})
    assert (cfg.name, cfg.vae, cfg.scorers) == ("yes", "1.5", ["pickscore", "on"])
    recipe.write_text("train:\n  name: yes\n")  # a flag given on the command line replaces the recipe's value
    assert load_stage_config(DemoCfg, "train", str(recipe), {"name": "n"}).name == "n"


def test_a_changed_long_setting_is_named_cut_short(tmp_path):
    from aifeedback.storage.manifest import OutputConflictError, prepare_output

    prepare_output(tmp_path, "generate", {}, {"negative_prompt": "a" * 100_000})
    with pytest.raises(OutputConflictError, match=r"differs in: negative_prompt: 'aaa.*\.\.\.a*' -> 'bbb") as exc:
        prepare_output(tmp_path, "generate", {}, {"negative_prompt": "b" * 100_000})
    assert len(str(exc.value)) < 400
