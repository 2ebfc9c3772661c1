"""Checkpoints are data, not code: the exact-resume state (optimizer, lr schedule, grad scaler, every process's RNG)
round-trips bitwise without pickle, a damaged or foreign file stops the resume with one line naming it, and a
crafted pickle in a checkpoint is never unpickled."""

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aifeedback.storage import train_state as ts
from aifeedback.storage.checkpoints import CheckpointError
from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic


class _Marker:
    """Unpickling it creates the file `path`: what a crafted checkpoint file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _objects(rank: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, rank), torch.nn.Linear(rank, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return net, opt, sched, scaler


def _train(net, opt, sched, steps=2):
    for _ in range(steps):
        net(torch.randn(4, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def _saved(tmp_path):
    net, opt, sched, scaler = _objects()
    _train(net, opt, sched)
    ts.save_state(tmp_path, opt, sched, scaler, accelerator_step=6, rank=0, main=True)
    return net, opt, sched, scaler


def test_the_resume_state_round_trips_bitwise_without_pickle(tmp_path):
    net, opt, sched, _ = _saved(tmp_path)
    weights = [p.detach().clone() for p in net.parameters()]
    expected = (random.random(), np.random.rand(), torch.rand(3))
    _train(net, opt, sched)  # the uninterrupted run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors",
                                                          "rng-0.safetensors", "scheduler.json"]
    for path in tmp_path.iterdir():  # nothing in it is a pickle: JSON and safetensors only
        json.loads(path.read_text()) if path.suffix == ".json" else load_file(path)
    net2, opt2, sched2, _ = _objects(seed=1)  # the resumed run: other weights and random numbers until loaded
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0)
    with torch.no_grad():
        for p, w in zip(net2.parameters(), weights, strict=True):
            p.copy_(w)
    random.random(), np.random.rand(), torch.rand(5)
    assert ts.load_state(tmp_path, opt2, sched2, scaler2, rank=0) == 6  # accelerate's micro-step counter
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9)  # a tuple again, as the optimizer made it
    assert scaler2.get_scale() == 1024.0 and sched2.last_epoch == 2
    _train(net2, opt2, sched2)
    assert all(torch.equal(a, b) for a, b in zip(net2.parameters(), net.parameters(), strict=True))


@pytest.mark.parametrize("name", ["rng-0.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json"])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_or_missing_state_file_is_one_line_naming_it(tmp_path, name, damage):
    _, opt, sched, scaler = _saved(tmp_path)
    path = tmp_path / name
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        ts.load_state(tmp_path, opt, sched, scaler, rank=0)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "Fix: resume an earlier checkpoint" in msg
    assert "weights_only" not in msg


def test_an_optimizer_state_of_other_shapes_is_refused(tmp_path):
    _saved(tmp_path)
    _, opt, sched, scaler = _objects(rank=4)  # as a checkpoint of another --lora-rank
    with pytest.raises(CheckpointError, match="other shapes than this run's.*another --lora-rank"):
        ts.load_state(tmp_path, opt, sched, scaler, rank=0)


def test_a_checkpoint_of_the_old_pickle_format_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "random_states_0.pkl").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(CheckpointError, match=r"older aifeedback version.*random_states_0.pkl.*a pickle can run code"):
        ts.check_format(tmp_path)
    assert not marker.exists()


def test_sharded_files_are_read_only_as_plain_data(tmp_path):
    """accelerate's FSDP files (torch.distributed.checkpoint; torch.save) pass; a crafted item or file is refused
    before it is unpickled."""
    import torch.distributed.checkpoint as dcp

    from aifeedback.storage.sharded_state import check_sharded_files

    marker = tmp_path / "ran"
    good, bad = tmp_path / "good", tmp_path / "bad"
    with pytest.warns(UserWarning):  # torch: no process group, so a single-process save
        dcp.save({"model": {"w": torch.randn(2, 3)}, "step": 3, "groups": [{"lr": 0.1}]},
                 storage_writer=dcp.FileSystemWriter(good / "pytorch_model_fsdp_0"))
    torch.save({"step": torch.tensor(1)}, good / "scaler.pt")
    check_sharded_files(good)
    with pytest.warns(UserWarning):
        dcp.save({"model": {"w": torch.randn(2)}, "x": _Marker(marker)},
                 storage_writer=dcp.FileSystemWriter(bad / "optimizer_0"))
    with pytest.raises(CheckpointError, match=r"__0_0.distcp: refused: .*cannot run code"):
        check_sharded_files(bad)
    assert not marker.exists()
    (good / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl: refused"):
        check_sharded_files(good)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# end to end: aif train --resume


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(6))


def test_resume_never_runs_a_crafted_pickle_and_stops_on_a_truncated_rng(human, tmp_path):
    """A shared checkpoint with accelerate's pickles planted in it resumes without unpickling them (the format reads
    none); a truncated random state stops the resume instead of continuing on other random numbers, and truncated
    weights stop it naming the file."""
    from aifeedback.errors import AifError
    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", max_steps=1, checkpoint_every=1))
    ckpt = out / "checkpoints" / "checkpoint-000001"
    marker = tmp_path / "ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        (ckpt / name).write_bytes(pickle.dumps(_Marker(marker)))
    for name in ("rng-0.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        path = ckpt / name
        saved = path.read_bytes()
        path.write_bytes(saved[:-100])
        with pytest.raises(AifError, match=f"{name}: unreadable as safetensors") as e:
            run(tiny_train(human, out, max_steps=2, checkpoint_every=1))
        assert "\n" not in str(e.value)
        path.write_bytes(saved)
    run(tiny_train(human, out, max_steps=2, checkpoint_every=1))
    assert not marker.exists()
    state = json.loads((out / "checkpoints" / "checkpoint-000002" / "trainer_state.json").read_text())
    assert state["step"] == 2
    assert not list(Path(out / "checkpoints" / "checkpoint-000002").glob("*.pkl"))


def test_damaged_checkpoint_files_end_in_one_line_naming_them(human, tmp_path):
    """An unreadable trainer_state.json, a truncated LoRA file and a LoRA of another rank: one line each."""
    from aifeedback.errors import AifError
    from aifeedback.stages.train import run

    kw = dict(model="tiny-sdxl", lora_rank=2, lr=1e-3, max_steps=1, checkpoint_every=1)
    out = run(tiny_train(human, tmp_path / "run", **kw))
    ckpt = out / "checkpoints" / "checkpoint-000001"
    for name, damage, wanted in [("trainer_state.json", b'{"step": 1,', "trainer_state.json: unreadable"),
                                 ("pytorch_lora_weights.safetensors", None, "lora_weights.safetensors: unreadable")]:
        path = ckpt / name
        saved = path.read_bytes()
        path.write_bytes(damage if damage is not None else saved[: len(saved) // 2])
        with pytest.raises(AifError, match=wanted) as e:
            run(tiny_train(human, out, **dict(kw, max_steps=2)))
        assert "\n" not in str(e.value) and "Fix:" in str(e.value)
        path.write_bytes(saved)
    with pytest.raises(AifError, match=r"LoRA weights of other shapes .* another --lora-rank") as e:
        run(tiny_train(human, tmp_path / "other", **dict(kw, lora_rank=4, max_steps=2, resume=str(ckpt))))
    assert "\n" not in str(e.value)


def _weights_checkpoint(run: Path, step: int, value: float) -> None:
    from safetensors.torch import save_file

    ckpt = run / "checkpoints" / f"checkpoint-{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    save_file({"unet.a.lora.down.weight": torch.full((2, 2), value)}, str(ckpt / "pytorch_lora_weights.safetensors"))


def test_a_checkpoint_with_nonfinite_weights_is_never_the_last_good_one(tmp_path):
    from aifeedback.stages.train_resume import nonfinite_error

    _weights_checkpoint(tmp_path, 1, 0.5)
    _weights_checkpoint(tmp_path, 2, float("nan"))
    msg = str(nonfinite_error(tmp_path, "step 3: the loss is not finite"))
    good = tmp_path / "checkpoints" / "checkpoint-000001"
    assert f"The last good checkpoint is {good} (the later checkpoint-000002 holds NaN or inf weights" in msg
    assert f"--resume {good} --skip-nonfinite N" in msg
    only_bad = tmp_path / "bad"
    _weights_checkpoint(only_bad, 1, float("inf"))
    assert "No checkpoint with finite weights was written yet" in str(nonfinite_error(only_bad, "step 2: x"))


def test_damaged_tuned_weights_are_named_before_loading(tmp_path):
    """aif eval/sample --tuned: a truncated LoRA file or denoiser weights file is one line naming it (not a
    safetensors traceback, nor "could not be loaded" with download advice)."""
    from safetensors.torch import save_file

    from aifeedback.families.loading import apply_lora, load_denoiser

    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text("{}")
    weights = unet / "diffusion_pytorch_model.safetensors"
    save_file({"w": torch.zeros(64)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-10])
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    lora.write_bytes(weights.read_bytes())
    for load, path in [(lambda: load_denoiser(str(unet)), weights), (lambda: apply_lora(None, lora, "x"), lora)]:
        with pytest.raises(CheckpointError, match="unreadable as safetensors") as e:
            load()
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_a_sharded_resume_checks_accelerates_files_before_loading_them(tmp_path):
    """FSDP/DeepSpeed (accelerate refuses FSDP on a CPU, so the recipe's resume is driven by hand): the sharded files
    are checked before accelerate's load_state reads any of them, and a crafted one stops the resume there."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from aifeedback.stages.train import TrainRecipe

    _, opt, sched, _ = _saved(tmp_path)
    torch.save({"state": {}, "param_groups": []}, tmp_path / "optimizer_0.bin")
    loaded = []
    recipe = TrainRecipe.__new__(TrainRecipe)
    recipe.accelerator = SimpleNamespace(load_state=loaded.append, scaler=None, step=0,
                                         distributed_type=DistributedType.FSDP)
    recipe.sharded, recipe.lr_sched, recipe.rank, recipe.optimizer = True, sched, 0, opt
    recipe._load_train_state(tmp_path)
    assert loaded == [str(tmp_path)] and recipe.accelerator.step == 6
    marker = tmp_path / "ran"
    torch.save({"state": _Marker(marker)}, tmp_path / "optimizer_0.bin")
    with pytest.raises(CheckpointError, match=r"optimizer_0.bin: refused: it holds a Python object \(io.open\)"):
        recipe._load_train_state(tmp_path)
    assert loaded == [str(tmp_path)] and not marker.exists()  # accelerate was not asked to load it


def test_a_fresh_optimizer_gets_its_state_before_a_sharded_load_and_its_weights_do_not_move():
    """accelerate's FSDP1 load_state fills the keys of the live optimizer's state dict: a fresh optimizer's are none,
    and the resumed Adam would silently restart (tests/test_rl_fsdp.py shows the resumed run then differs)."""
    from aifeedback.stages.train_checkpoint import materialize_optimizer_state

    torch.manual_seed(0)
    trained, frozen, empty = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2)), \
        torch.nn.Parameter(torch.zeros(0))  # an FSDP shard can be empty on a process
    frozen.requires_grad_(False)
    before = trained.detach().clone()
    opt = torch.optim.AdamW([trained, frozen, empty], lr=0.1, weight_decay=0.5)
    materialize_optimizer_state(opt)
    assert set(opt.state) == {trained} and float(opt.state[trained]["step"]) == 1
    assert torch.equal(trained, before) and trained.grad is None and opt.param_groups[0]["lr"] == 0.1
    state = {k: v.clone() for k, v in opt.state[trained].items()}
    materialize_optimizer_state(opt)  # an optimizer that has state is left alone
    assert all(torch.equal(state[k], v) for k, v in opt.state[trained].items())
