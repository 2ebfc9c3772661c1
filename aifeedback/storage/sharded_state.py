"""The files accelerate writes for a sharded run (FSDP, DeepSpeed), checked before `accelerator.load_state` reads
them. Those formats are pickles (torch.save files; torch.distributed.checkpoint's `.metadata` and the non-tensor
items of its `.distcp` files, which torch itself unpickles without restriction), so each one is first read with a
restricted unpickler that can build only tensors and plain data (torch's `weights_only` loader; for `.metadata`
an allow-list of torch.distributed.checkpoint's own record classes). A file that needs anything else is refused,
naming it, before any of them is loaded. Files we never write (accelerate's `custom_checkpoint_*.pkl`, which it
would load with `weights_only=False`) are refused outright.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from aifeedback.errors import first_line
from aifeedback.storage.checkpoints import CheckpointError
from aifeedback.storage.torch_files import RefusedFileError, load_torch_file

PICKLED = (".pkl", ".bin", ".pt", ".pth")
_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "TensorProperties",
                                              "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


FIX = ("resume a checkpoint that aif train wrote (it resumes only files that cannot run code), or start over with "
       "another --out")


def refused(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: refused: {why}. Fix: {FIX}")


def check_sharded_files(folder: Path) -> None:
    """Raise CheckpointError for the first file under folder that load_state would unpickle beyond plain data."""
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if re.fullmatch(r"custom_checkpoint_\d+\.pkl", path.name):
            raise refused(path, "aif train never writes this file, and accelerate would unpickle it without "
                          "restriction")
        if path.name == ".metadata":
            _check_dcp(path)
        elif path.suffix in PICKLED:
            _check_torch_file(path)


def _check_torch_file(path: Path, data: bytes | None = None) -> None:
    from accelerate.utils.other import TORCH_SAFE_GLOBALS  # the numpy types of accelerate's random states

    try:
        load_torch_file(path, FIX, data, TORCH_SAFE_GLOBALS)
    except RefusedFileError as e:
        raise CheckpointError(str(e)) from None


class _DCPUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _DCP_GLOBALS.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                     torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a torch.distributed.checkpoint record")


def _check_dcp(path: Path) -> None:
    """A torch.distributed.checkpoint folder: its .metadata, then every non-tensor item of its .distcp files."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    try:
        with open(path, "rb") as f:
            meta = _DCPUnpickler(f).load()
        items = [(index, info) for index, info in meta.storage_data.items()
                 if isinstance(meta.state_dict_metadata.get(index.fqn), BytesStorageMetadata)]
    except Exception as e:  # an UnpicklingError for a refused class, or any error of a damaged file
        raise refused(path, f"it is damaged or not plain torch.distributed.checkpoint metadata "
                      f"({first_line(e)[:200]})") from None
    for _, info in items:
        shard = path.parent / info.relative_path
        if getattr(info, "transform_descriptors", None):
            raise refused(shard, "it holds transformed (compressed) non-tensor items, which cannot be checked")
        with open(shard, "rb") as f:
            f.seek(info.offset)
            _check_torch_file(shard, f.read(info.length))
