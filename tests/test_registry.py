"""Registries: one typed list per extension point, from which listings, choices and commands derive."""

import sys
import typing
from dataclasses import dataclass

import pytest

from aifeedback.config import fields
from aifeedback.errors import AifError
from aifeedback.losses import LOSSES
from aifeedback.registry import Registry, UnknownNameError
from aifeedback.stages import STAGES


@dataclass(frozen=True)
class Entry:
    name: str
    help: str


def test_registry_keeps_order_and_names_the_valid_entries_on_a_bad_name():
    reg = Registry("widget", [Entry("alpha", "first"), Entry("beta", "second")])
    assert list(reg) == ["alpha", "beta"] and reg["beta"].help == "second" and "alpha" in reg and "gamma" not in reg
    assert reg.describe() == {"alpha": "first", "beta": "second"} and reg.get("gamma") is None
    with pytest.raises(UnknownNameError, match="unknown widget 'alpah'; Did you mean 'alpha'\\? valid: alpha, beta"):
        reg["alpah"]
    assert issubclass(UnknownNameError, AifError)  # the CLI reports it as a clean error (exit 2)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Entry("alpha", "again"))


def test_config_choices_and_commands_derive_from_the_registries():
    train = STAGES["train"].config
    loss_type = {f.name: tp for f, tp in fields(train)}["loss"]
    assert typing.get_args(loss_type) == LOSSES.names()
    from aifeedback.cli import app

    assert [c.name for c in app.registered_commands if c.name in STAGES] == list(STAGES)


def test_stage_configs_are_light():
    # The command line builds every --help from the configs: they must not import torch or diffusers.
    from tests.launch import run_group

    code = ("import sys, aifeedback.cli; heavy = {'torch', 'diffusers', 'transformers', 'accelerate', 'datasets'};"
            "print(sorted(heavy & set(sys.modules)))")
    out = run_group([sys.executable, "-c", code], check=True).stdout
    assert out.strip() == "[]"
