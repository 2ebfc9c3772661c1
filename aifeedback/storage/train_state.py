"""The exact-resume state of a training run, as data: nothing in it is a pickle, so a shared checkpoint cannot run
code when it is resumed, and every file is read back strictly (a missing, damaged or mismatched one is an error
naming it, never a silent fresh start of that part).

Files in a checkpoint folder (see checkpoints.py for the whole layout):
  optimizer.json + optimizer.safetensors   the optimizer's param_groups and non-tensor state (JSON), its tensor
                                           state (safetensors, keys "PARAM_INDEX.NAME"), every parameter's shape
  scheduler.json                           the lr schedule's state_dict, the grad scaler's (fp16), accelerate's
                                           micro-step counter
  rng-N.safetensors                        process N's random number generators: Python `random`, numpy, torch
                                           CPU, CUDA/MPS when present (tensors; the few scalars in the metadata)
Under FSDP/DeepSpeed the sharded model and optimizer stay in the files accelerate writes for them
(storage/sharded_state.py checks them before they are loaded); the rest is written here as above.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aifeedback.errors import first_line
from aifeedback.storage.checkpoints import CheckpointError

FORMAT = 1
OPTIMIZER_JSON, OPTIMIZER_TENSORS, SCHEDULER_JSON = "optimizer.json", "optimizer.safetensors", "scheduler.json"
OLD_FILES = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl", "scaler.pt")


def rng_file(rank: int) -> str:
    return f"rng-{rank}.safetensors"


def damaged(path: Path, what: str) -> CheckpointError:
    """The one error for a checkpoint file that cannot be used: which file, what is wrong, what to do."""
    return CheckpointError(
        f"{path}: {what}. This checkpoint cannot be resumed exactly. Fix: resume an earlier checkpoint (--resume "
        f"{path.parent.parent}/checkpoint-NNNNNN, or delete {path.parent} so that --resume auto takes the one "
        "before it), or start over with another --out")


# ---------------------------------------------------------------------------------------------------------------
# writing

def save_state(folder: Path, optimizer: Any, lr_sched: Any, scaler: Any, accelerator_step: int, rank: int,
               main: bool) -> None:
    """Write this process's RNG file; the main process also writes the optimizer (optimizer=None: sharded, accelerate
    wrote it), the lr schedule and the grad scaler. The caller waits for every process before publishing."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _rng_state(accelerator_step)
    save_file(tensors, str(folder / rng_file(rank)), metadata=meta)
    if not main:
        return
    if optimizer is not None:
        structure, opt_tensors = _optimizer_state(optimizer)
        save_file(opt_tensors, str(folder / OPTIMIZER_TENSORS), metadata={"format": str(FORMAT)})
        _write_json(folder / OPTIMIZER_JSON, structure)
    schedule = {"format": FORMAT, "lr_scheduler": lr_sched.state_dict(),
                "grad_scaler": scaler.state_dict() if scaler is not None else None}
    _write_json(folder / SCHEDULER_JSON, schedule)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")  # not default=str: a value JSON cannot hold is a bug


def _optimizer_state(optimizer: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sd = optimizer.state_dict()
    tensors, state = {}, {}
    for index, values in sd["state"].items():
        entry = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                key = f"{index}.{name}"
                tensors[key] = value.detach().to("cpu").contiguous().clone()
                entry[name] = {"tensor": key}
            else:
                entry[name] = value
        state[str(index)] = entry
    shapes = [list(p.shape) for p in _params(optimizer)]
    return {"format": FORMAT, "param_groups": sd["param_groups"], "shapes": shapes, "state": state}, tensors


def _params(optimizer: Any) -> list[torch.Tensor]:
    """The parameters in the order of the optimizer state dict's indices."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _rng_state(accelerator_step: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    version, mt, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    tensors = {"python": torch.tensor(mt, dtype=torch.int64), "numpy": torch.from_numpy(key.astype(np.int64)),
               "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    if torch.backends.mps.is_available():
        tensors["mps"] = torch.mps.get_rng_state()
    meta = {"format": FORMAT, "python_version": version, "python_gauss": gauss, "numpy_kind": kind,
            "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(cached),
            "accelerator_step": accelerator_step}
    return tensors, {k: json.dumps(v) for k, v in meta.items()}


# ---------------------------------------------------------------------------------------------------------------
# reading

def check_format(folder: Path) -> None:
    """Refuse a checkpoint whose resume state is accelerate's pickles (written before this format): never unpickled."""
    if (folder / SCHEDULER_JSON).exists():
        return
    old = [name for name in OLD_FILES if (folder / name).exists()]
    what = (f"was written by an older aifeedback version: its optimizer, lr schedule and random states are pickle "
            f"files ({', '.join(old)}), which resume no longer loads because a pickle can run code"
            if old else f"holds no {SCHEDULER_JSON} (it is incomplete or not a checkpoint of aif train)")
    raise CheckpointError(f"{folder} {what}. Its weights still work (aif sample/eval --tuned, aif export); to train "
                          "on, start a new run: another --out, or --resume none --overwrite to replace this one")


def load_state(folder: Path, optimizer: Any, lr_sched: Any, scaler: Any, rank: int) -> int:
    """Load what save_state wrote into the live objects (optimizer=None: sharded, loaded by accelerate); returns
    accelerate's micro-step counter. Call after the model weights are loaded and before any random number is drawn."""
    if optimizer is not None:
        _load_optimizer(folder, optimizer)
    schedule = _read_json(folder / SCHEDULER_JSON)
    _load_into(folder / SCHEDULER_JSON, lr_sched, schedule.get("lr_scheduler"), "lr schedule")
    if scaler is not None:
        _load_into(folder / SCHEDULER_JSON, scaler, schedule.get("grad_scaler"), "grad scaler (fp16)")
    return _load_rng(folder / rng_file(rank))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise damaged(path, "the file is missing") from None
    except (OSError, ValueError) as e:
        raise damaged(path, f"unreadable ({first_line(e)})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise damaged(path, f"not a resume state of format {FORMAT}")
    return obj


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.exists():
        raise damaged(path, "the file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError): a truncated or foreign file
        raise damaged(path, f"unreadable as safetensors ({first_line(e)})") from None


def _load_into(path: Path, obj: Any, state: Any, what: str) -> None:
    """obj.load_state_dict(state) after checking that state has exactly the keys obj's own state has."""
    want = set(obj.state_dict())
    if not isinstance(state, dict) or set(state) != want:
        raise damaged(path, f"its {what} state does not have the expected fields {sorted(want)}")
    obj.load_state_dict(state)


def _load_optimizer(folder: Path, optimizer: Any) -> None:
    path = folder / OPTIMIZER_JSON
    saved = _read_json(path)
    tensors, _ = _read_tensors(folder / OPTIMIZER_TENSORS)
    current = optimizer.state_dict()["param_groups"]
    try:
        groups, shapes, state = saved["param_groups"], saved["shapes"], saved["state"]
        counts = [len(g["params"]) for g in groups]
    except (KeyError, TypeError):
        raise damaged(path, "its optimizer state lacks param_groups, shapes or state") from None
    own = [list(p.shape) for p in _params(optimizer)]
    if counts != [len(g["params"]) for g in current] or shapes != own:
        raise damaged(path, f"its optimizer state is for {sum(counts)} parameters of other shapes than this run's "
                      f"{len(own)} (another --lora-rank, model or optimizer?)")
    groups = [{k: tuple(v) if isinstance(cur.get(k), tuple) else v for k, v in g.items()}
              for g, cur in zip(groups, current, strict=True)]
    used, restored = set(), {}
    for index, values in state.items():
        entry = {}
        for name, value in values.items():
            if isinstance(value, dict) and set(value) == {"tensor"}:
                if value["tensor"] not in tensors:
                    raise damaged(folder / OPTIMIZER_TENSORS, f"the tensor {value['tensor']} is missing")
                used.add(value["tensor"])
                value = tensors[value["tensor"]]
            entry[name] = value
        restored[int(index)] = entry
    if used != set(tensors):
        raise damaged(folder / OPTIMIZER_TENSORS, f"it holds tensors {path.name} does not name")
    optimizer.load_state_dict({"state": restored, "param_groups": groups})


def _load_rng(path: Path) -> int:
    tensors, raw = _read_tensors(path)
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
        if meta["format"] != FORMAT:
            raise ValueError(f"format {meta['format']}")
        python = (meta["python_version"], tuple(tensors["python"].tolist()), meta["python_gauss"])
        numpy = (meta["numpy_kind"], tensors["numpy"].numpy().astype(np.uint32), meta["numpy_pos"],
                 meta["numpy_has_gauss"], meta["numpy_gauss"])
        cpu, step = tensors["torch"], int(meta["accelerator_step"])
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise damaged(path, f"not a complete random state ({first_line(e)})") from None
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "mps" in tensors and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["mps"])
    return step
