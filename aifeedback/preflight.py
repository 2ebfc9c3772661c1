"""Checks each stage makes first thing in run(): names that cannot work fail in a second, with the fix.

Importing torch, diffusers and accelerate alone takes many seconds, and loading a model minutes; a misspelt model,
scorer, folder or checkpoint, or a missing optional package, must not wait for that. Every check here looks only
at the file system, the Hugging Face cache (or hub) and installed package metadata: nothing imports torch, except
`check_device` for a device other than auto or cpu (only torch can tell whether the GPU it names is there).
The stage-specific combinations live in each config's `preflight()` method.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterable

from aifeedback.data.labels import OPEN_PREFERENCES
from aifeedback.errors import AifError, DataError, OutputWriteError
from aifeedback.scoring.scorers.vlm_check import check_vlm
from aifeedback.scoring.scorers.vlm_judges import JUDGES
from aifeedback.scoring.scorers.vlm_served import is_url

# A scorer MODEL that names a file by its extension is a local checkpoint, never a hub id or a version.
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class MissingPackageError(AifError):
    """An option needs an optional package that is not installed."""


def check_package(module: str, option: str, extra: str, alternative: str = "") -> None:
    """Refuse `option` when `module` is not installed, naming the extra that installs it."""
    if importlib.util.find_spec(module) is None:
        alt = f", or {alternative}" if alternative else ""
        raise MissingPackageError(f"{option} needs the '{module}' package, which is not installed. "
                                  f"Fix: pip install 'aifeedback[{extra}]'{alt}.")


def check_device(device: str | None, option: str = "--device", mixed_precision: str = "no") -> None:
    """Refuse a device that is not there (`--device cuda` without a GPU, `cuda:3` on a machine with one, a name
    torch does not know) and fp16 autocast without a GPU, before any model loads. device None or 'auto' is this
    process's accelerator (training's is accelerate's: a GPU when one is visible)."""
    if device in (None, "auto", "cpu") and mixed_precision != "fp16":
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if mixed_precision == "fp16" and not gpus and device in (None, "auto", "cpu"):
        raise AifError("--mixed-precision fp16: fp16 autocast needs a GPU, and this machine has none visible (on a "
                       "CPU the fp16 weights meet fp32 activations and the step fails). Fix: pass --mixed-precision "
                       "bf16 or no, or run on a machine with a GPU")
    if device in (None, "auto", "cpu"):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise AifError(f"{option} {device}: not a device name. Fix: pass auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (dev.index or 0) >= gpus:
        have = f"{gpus} GPU(s) visible (cuda:0 to cuda:{gpus - 1})" if gpus else "no GPU visible to torch"
        raise AifError(f"{option} {device}: this machine has {have}. Fix: pass {option} auto (a GPU when there is "
                       f"one, else the CPU){' or cpu' if not gpus else ''}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise AifError(f"{option} {device}: Apple's MPS backend is not available here. Fix: pass {option} auto or cpu")


def check_scorers(specs: Iterable[str], option: str = "--scorer") -> None:
    """Every spec names a registered scorer, and a MODEL that is a local path exists."""
    from aifeedback.scoring.scorers import ScorerLoadError, parse_spec

    for spec in specs:
        name, model = parse_spec(spec)
        if name in JUDGES:
            check_vlm(spec, name, model)
            if is_url(model):  # probed
                continue
        if model is None or Path(model).expanduser().exists():
            continue
        if model.startswith((".", "/", "~")) or Path(model).suffix.lower() in _WEIGHT_SUFFIXES:
            raise ScorerLoadError(f"{option} {spec}: {model} does not exist. Fix: check the path, or use NAME:tiny "
                                  f"for an offline test model (`aif models` lists the scorers).")


def check_rule_prompts(specs: Iterable[str], prompts: str, column: str | None, limit: int | None) -> None:
    """A rule scorer (geneval, geneval-verdict) judges only its benchmark's prompts: with one among `specs`, the
    prompts of a built-in set or file are checked now, before any image is generated (datasets: when scored)."""
    from aifeedback.data.prompts import load_prompts, source_kind
    from aifeedback.scoring.scorers import parse_spec

    if not any(parse_spec(spec)[0] in ("geneval", "geneval-verdict") for spec in specs):
        return
    if source_kind(prompts) in ("builtin", "file"):
        from aifeedback.evaluation.geneval import specs_for

        specs_for([p.text for p in load_prompts(prompts, column, limit=limit)])


def is_hub_id(source: str) -> bool:
    """Whether `source` has the shape of a hub dataset id (org/name), not of a path."""
    return not source.startswith((".", "/", "~")) and source.count("/") == 1 and not source.endswith("/")


def check_dataset(source: str, option: str) -> None:
    """`source` is an existing local file or folder, or has the shape of a hub dataset id (org/name)."""
    if Path(source).expanduser().exists():
        return
    if not is_hub_id(source):
        raise DataError(f"could not load dataset '{source}' ({option}): it is neither a local path nor a hub "
                        f"dataset id (org/name). Fix: check the path, or pass a hub id such as "
                        f"{OPEN_PREFERENCES}.")


def check_output(out: str | Path, option: str = "--out") -> None:
    """`out` is a folder this process can write, or can be made one: a file in the way or a read-only disk fails
    now, not after the model has loaded or an hour of work is done."""
    path = Path(out).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())  # the root always exists
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise OutputWriteError(f"{option} {out} {what}, not a folder. Fix: choose another {option} (a folder path), "
                               f"or move the file away.")
    if not os.access(existing, os.W_OK | os.X_OK):  # also False on a read-only file system, even for root
        raise OutputWriteError(f"{option} {out}: cannot write in {existing} (read-only or no permission). Fix: choose "
                               f"another {option}, or make {existing} writable.")


class OutputOverlapError(AifError):
    """An output folder is, contains or lies inside one of the stage's inputs."""


def check_apart(out: str | Path, inputs: dict[str, Path], option: str = "--out") -> None:
    """Refuse an `out` that is, contains or lies inside an input (`inputs`: field name -> resolved path), before
    anything is written. --overwrite there would delete the input before it is read, and an output inside an input
    folder becomes part of that input for every later reader (its Parquet shards read as input rows)."""
    target = Path(out).expanduser().resolve()  # resolves the existing part: symlinks, `./`, trailing slashes
    for name, path in inputs.items():
        if target == path:
            how = "is"
        elif path in target.parents:
            how = "lies inside"
        elif target in path.parents:
            how = "contains"
        else:
            continue
        raise OutputOverlapError(
            f"{option} {out} {how} the input --{name.replace('_', '-')} {path}: writing there would overwrite or "
            f"mix with what the stage reads. Fix: choose an {option} outside {path} that does not contain it either, "
            f"e.g. {path.parent / (path.stem + '-out')}.")


def check_base_quantization(choice: str, kind: str | None, tuned: str | None) -> None:
    """Preflight of a sampling stage's --base-quantization: `kind` is check_pipeline's for --tuned (a whole tuned
    denoiser would load unquantized), then `check_quantization`."""
    if kind == "unet" and choice != "none":
        raise AifError(f"--base-quantization {choice} quantizes the base model, but --tuned {tuned} replaces its "
                       f"whole denoiser, which would be loaded unquantized. Fix: pass --base-quantization none, or a "
                       f"LoRA as --tuned")
    check_quantization(choice)


def check_quantization(choice: str) -> None:
    """Preflight: the backend's package is installed, and a GPU is visible where the backend needs one."""
    from aifeedback.families.quantize import QUANTIZATIONS

    if choice == "none":
        return
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "").lower() in ("true", "1"):
            raise AifError(f"--base-quantization {choice}: this run is launched with {name}, which would shard the "
                           f"quantized frozen weights (not supported); a LoRA run on a quantized base keeps the whole "
                           f"base on each GPU. Fix: launch with DDP (accelerate launch --multi_gpu) or one process, "
                           f"or pass --base-quantization none")
    q = QUANTIZATIONS[choice]
    others = [k for k, o in QUANTIZATIONS.items() if not o.cuda_only and k != choice]
    check_package(q.package, f"--base-quantization {choice}", q.extra,
                  "use --base-quantization " + " or ".join([*others, "none"]))
    if q.cuda_only:
        import torch

        if not torch.cuda.is_available():
            raise AifError(f"--base-quantization {choice}: {q.package} loads {choice} weights only on a CUDA GPU, and "
                           f"this machine has none visible. Fix: pass --base-quantization "
                           f"{' or '.join(others)} (runs on a CPU), or none, or run on a machine with a GPU")
