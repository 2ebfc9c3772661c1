"""storage/: the one atomic publish (files and folders), and finding a run's latest checkpoint."""

import json
import os
import signal
import stat
import sys

import pytest

from aifeedback.storage.checkpoints import CheckpointError, latest_checkpoint, prune, resolve_checkpoint
from aifeedback.storage.files import atomic_write_text
from aifeedback.storage.publish import publish, publishing, remove_stale, temporary_path
from aifeedback.storage.shards import shard_files, write_shard
from tests.launch import run_group


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_published_file_and_folder_appear_complete_with_the_modes_of_open_and_mkdir(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    with publishing(tmp_path / "a.txt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.") and not (tmp_path / "a.txt").exists()
        tmp.write_text("hello")
    with publishing(tmp_path / "sub" / "model", folder=True) as tmp:
        assert tmp == temporary_path(tmp_path / "sub" / "model") and tmp.is_dir()
        (tmp / "weights.bin").write_bytes(b"w")
    assert (tmp_path / "a.txt").read_text() == "hello" and mode(tmp_path / "a.txt") == mode(tmp_path / "plain.txt")
    assert (tmp_path / "sub" / "model" / "weights.bin").read_bytes() == b"w"
    assert mode(tmp_path / "sub" / "model") == mode(tmp_path / "plain")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "model", "plain", "plain.txt", "sub", "weights.bin"]


@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_publish_leaves_nothing_and_keeps_the_old_final(tmp_path, folder):
    with pytest.raises(KeyboardInterrupt), publishing(tmp_path / "new", folder=folder) as tmp:
        (tmp / "part" if folder else tmp).write_text("half")
        raise KeyboardInterrupt
    atomic_write_text(tmp_path / "old", "old")
    with pytest.raises(RuntimeError), publishing(tmp_path / "old", folder=folder, replace=True):
        raise RuntimeError("killed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (tmp_path / "old").read_text() == "old"


def test_an_existing_final_is_replaced_only_when_asked(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "stale.bin").write_text("old run")
    with pytest.raises(FileExistsError, match="replace=True"), publishing(final, folder=True):
        pytest.fail("the block must not run: the work would be thrown away")
    assert [p.name for p in final.iterdir()] == ["stale.bin"]
    with publishing(final, folder=True, replace=True) as tmp:
        (tmp / "new.bin").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.bin"]
    with publishing(final, replace=True) as tmp:  # a file over a folder
        tmp.write_text("file")
    assert final.read_text() == "file"
    with publishing(final, replace=True) as tmp:
        tmp.write_text("file 2")
    assert final.read_text() == "file 2" and [p.name for p in tmp_path.iterdir()] == ["out"]
    other = tmp_path / ".x.tmp"
    other.write_text("x")
    with pytest.raises(FileExistsError):
        publish(other, final)
    assert final.read_text() == "file 2"


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from aifeedback.storage.publish import publishing
with publishing(Path(sys.argv[1]), folder=sys.argv[2] == "folder") as tmp:
    (tmp / "half" if tmp.is_dir() else tmp).write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_leaves_only_a_hidden_temporary_that_the_rerun_clears(tmp_path):
    for kind in ("file", "folder"):
        r = run_group([sys.executable, "-c", KILLED_WRITER, str(tmp_path / kind), kind], timeout=120,
                      capture_output=False)
        assert r.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith(".") and n.endswith(".tmp") for n in left), left
    with publishing(tmp_path / "folder", folder=True) as tmp:  # the rerun of the folder
        assert not (tmp / "half").exists()
        (tmp / "whole").write_text("whole")
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["whole"]
    remove_stale(tmp_path)  # what a stage does for its files before it writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_shards_are_published_with_the_modes_of_open(tmp_path):
    (tmp_path / "plain").write_text("x")
    path = write_shard(tmp_path, 3, [{"a": 1}, {"a": 2}])
    assert shard_files(tmp_path) == [path] and path.name == "train-00003.parquet"
    assert mode(path) == mode(tmp_path / "plain") and os.listdir(path.parent) == [path.name]


def _checkpoint(run, step, state=True):
    ckpt = run / "checkpoints" / f"checkpoint-{step:06d}"
    ckpt.mkdir(parents=True)
    if state:
        (ckpt / "trainer_state.json").write_text("{}")
    return ckpt


def test_latest_checkpoint_numbers_decide_and_resume_needs_a_state(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoints/checkpoint-NNNNNN/ folder yet"):
        latest_checkpoint(run)
    old = _checkpoint(run, 900)
    (run / "checkpoints" / ".checkpoint-002000.tmp").mkdir()  # a save killed before its rename
    newest = _checkpoint(run, 1000, state=False)  # a model, but nothing to resume from
    assert latest_checkpoint(run) == newest
    assert latest_checkpoint(run, require_state=True) == resolve_checkpoint(run) == old
    prune(run, keep=0)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-000900", "checkpoint-001000"]
    with pytest.raises(CheckpointError, match="holding trainer_state.json"):
        resolve_checkpoint(_checkpoint(tmp_path / "other", 5, state=False).parent.parent)


_SAVE_LORA = """
import sys
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from aifeedback.storage.checkpoints import save_lora
torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8,),
                            down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                            cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
unet.add_adapter(LoraConfig(r=2, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
save_lora(unet, sys.argv[1], StableDiffusionPipeline)
"""


def test_lora_files_are_identical_across_hash_seeds(tmp_path):
    """peft keeps target_modules as a set, whose order follows PYTHONHASHSEED: the saved file must not."""
    files = []
    for seed in ("0", "1"):  # string hashes are fixed per seed (SipHash); these two order the 4 names differently
        out = tmp_path / seed
        env = dict(os.environ, PYTHONHASHSEED=seed)
        run_group([sys.executable, "-c", _SAVE_LORA, str(out)], check=True, env=env)
        files.append((out / "pytorch_lora_weights.safetensors").read_bytes())
    assert all(f == files[0] for f in files[1:])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0" / "pytorch_lora_weights.safetensors"), "pt") as f:  # still a valid file
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])
        assert adapter["unet.target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]
        assert all(".lora." in k and f.get_tensor(k).numel() for k in f.keys())


def test_safetensors_metadata_is_rewritten_sorted_in_place(tmp_path):
    """safetensors writes its metadata map in a per-process random order (a Rust HashMap): save_lora sorts it."""
    from safetensors.torch import load_file

    from aifeedback.storage.checkpoints import _sort_header_metadata

    header = b'{"__metadata__":{"format":"pt","a":"x\\n\\u00e9"},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    header = header.ljust(len(header) + 3)  # padded, as safetensors pads to 8 bytes
    path = tmp_path / "f.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00\x00\x80\x3f")
    _sort_header_metadata(path)
    data = path.read_bytes()
    assert data[8:8 + len(header)].rstrip().startswith(b'{"__metadata__":{"a":"x\\n\xc3\xa9","format":"pt"}')
    assert len(data) == 8 + len(header) + 4 and load_file(str(path))["t"].item() == 1.0
