"""Every stage still gives the recorded outputs (tests/golden.py says what is compared, how it was recorded, and
which tolerances the kernels of other CPUs need: `make test-isa` reruns this under two emulated kernel sets)."""

import copy
import json

import pytest
import torch

from tests.golden import REDNESS_LEVEL, differences, run_all


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.numerics
def test_outputs_equal_the_recording(outputs):
    assert differences(*outputs) == []


def recording():
    from safetensors.torch import load_file

    from tests.golden import FOLDER

    return load_file(str(FOLDER / "outputs.safetensors")), json.loads((FOLDER / "outputs.json").read_text())


def test_the_recording_equals_itself_and_a_behaviour_change_does_not():
    tensors, values = recording()
    assert differences(tensors, values) == []
    moved = dict(tensors)  # one training step (lr 1e-4) more or less on 1 in 1000 weights of each trained model
    for name in [n for n in tensors if n.startswith(("lora/", "full/", "export/"))]:
        step = torch.zeros(tensors[name].numel())
        step[::1000] = 1e-4
        moved[name] = tensors[name] + step.view_as(tensors[name])
    assert len(differences(moved, values)) == 3  # lora, full and export
    darker = dict(tensors, **{"sample/pixels": tensors["sample/pixels"] // 2})
    assert [p.split(":")[0] for p in differences(darker, values)] == ["sample/pixels"]
    redder = copy.deepcopy(values)  # 3 levels of R over the 6 eval images: the mean that training moved by 2.5
    redder["eval"]["redness"]["mean_tuned"] += 3 * REDNESS_LEVEL
    assert [p.split(":")[0] for p in differences(tensors, redder)] == ["eval redness mean_tuned"]
