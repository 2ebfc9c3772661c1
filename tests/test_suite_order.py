"""`pytest --shuffle SEED` (tests/conftest.py; `make test-shuffled` in CI): a reproducible order that keeps each
module's tests together."""

from types import SimpleNamespace

import pytest

from tests import conftest


def shuffled(seed, nodeids):
    items = [SimpleNamespace(nodeid=n) for n in nodeids]
    conftest.pytest_collection_modifyitems(SimpleNamespace(shuffle_seed=seed), items)
    return [item.nodeid for item in items]


NODES = [f"tests/test_{m}.py::test_{i}" for m in "abcdef" for i in range(6)]


def test_shuffle_is_a_seeded_permutation_that_keeps_modules_together():
    order = shuffled("7", NODES)
    assert sorted(order) == sorted(NODES) and order != NODES
    assert order == shuffled("7", NODES) and order != shuffled("8", NODES)
    modules = [n.split("::")[0] for n in order]
    assert all(modules.index(m) + 6 == len(modules) - modules[::-1].index(m) for m in set(modules))  # contiguous
    assert [m for i, m in enumerate(modules) if i % 6 == 0] != sorted(set(modules))  # the modules move too
    assert shuffled(None, NODES) == NODES  # without --shuffle: the file order


@pytest.mark.parametrize("given, ok", [("random", True), ("123", True), ("abc", False), ("-1", False)])
def test_shuffle_seed_is_an_integer_or_random(given, ok):
    config = SimpleNamespace(getoption=lambda name: given)
    if not ok:
        with pytest.raises(pytest.UsageError, match="give an integer seed"):
            conftest.pytest_configure(config)
        return
    conftest.pytest_configure(config)
    assert config.shuffle_seed.isdigit() and (given == "random" or config.shuffle_seed == given)
