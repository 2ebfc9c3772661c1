"""Training checkpoints on disk: naming, finding the latest, LoRA files in the diffusers format, pruning.

Layout of one checkpoint (written under a temporary name and renamed when complete, so a killed run never leaves
a half checkpoint that `--resume latest` would pick up):

  RUN/checkpoints/checkpoint-000500/
    unet/ or transformer/               full fine-tune: the denoiser's save_pretrained (safetensors), named as the
                                        pipeline component it replaces (UNet families, flow-matching transformers)
    pytorch_lora_weights.safetensors    LoRA: what `pipe.load_lora_weights` reads
    ema/                                with --ema-decay: the moving average, as unet/ or the LoRA file above
    trainer_state.json                  step, data position, counters
    optimizer.json + .safetensors       exact resume, as data (train_state.py; no file of a checkpoint is a pickle):
    scheduler.json, rng-N.safetensors   optimizer, lr schedule + grad scaler, process N's random number generators
    pytorch_model_fsdp_0/, optimizer_0/, ...   FSDP/DeepSpeed only: accelerate's sharded model and optimizer, checked
                                        to hold only tensors and plain data before they are loaded (sharded_state.py)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from aifeedback.errors import AifError, first_line
from aifeedback.storage.publish import remove_stale

LORA_FILE = "pytorch_lora_weights.safetensors"
DENOISER_DIRS = ("unet", "transformer")  # the pipeline components a full fine-tune can hold (Family.denoiser)
STATE_FILE = "trainer_state.json"
EMA_DIR = "ema"  # a checkpoint's moving average of the trained weights (aif train --ema-decay), same layout
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(AifError):
    """A checkpoint path that does not hold a usable checkpoint."""


def checkpoint_name(step: int) -> str:
    """checkpoint-000500."""
    return f"checkpoint-{step:06d}"


def list_checkpoints(run_dir: str | Path, require_state: bool = True) -> list[Path]:
    """Checkpoints of a run, oldest first; require_state=True keeps only those resume can continue from."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and p.is_dir() and (not require_state or (p / STATE_FILE).exists())]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path, require_state: bool = False) -> Path:
    """The highest-numbered checkpoint of a training run: any (a model is enough to sample from), or with
    require_state only one that resume can continue from."""
    ckpts = list_checkpoints(run_dir, require_state)
    if not ckpts:
        held = f" holding {STATE_FILE}" if require_state else ""
        raise CheckpointError(f"{run_dir} is a training run with no checkpoints/checkpoint-NNNNNN/ folder{held} yet. "
                              "Fix: wait for its first checkpoint (see --checkpoint-every), or pass a checkpoint "
                              "folder or an exported model")
    return ckpts[-1]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (-> its latest checkpoint)."""
    p = Path(path)
    if (p / STATE_FILE).exists() or (p / LORA_FILE).exists() or denoiser_dir(p) is not None:
        return p
    if (p / "checkpoints").is_dir():
        return latest_checkpoint(p, require_state=True)
    raise CheckpointError(
        f"{p} is neither a training checkpoint (checkpoint-NNNNNN/ with unet/, transformer/ or {LORA_FILE}) nor a "
        "run folder "
        "with checkpoints/. Fix: pass RUN_DIR or RUN_DIR/checkpoints/checkpoint-NNNNNN"
    )


def read_state(ckpt: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json; a damaged one is a CheckpointError naming it."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step number in it")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({first_line(e)}): the checkpoint is damaged. Fix: delete "
                              f"{Path(ckpt)} so that --resume auto continues from the checkpoint before it, or pass "
                              "--resume with an earlier checkpoint") from None
    return state


def check_weights_file(path: str | Path) -> None:
    """Raise a CheckpointError naming a safetensors file that is missing, truncated or not safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors' own error type, or OSError
        raise CheckpointError(f"{path}: unreadable as safetensors ({first_line(e)}): the file is damaged or truncated. "
                              "Fix: use another checkpoint or export of that run, or write it again") from None


def finite_weights(ckpt: str | Path) -> bool:
    """Whether every weight file of a checkpoint (LoRA or denoiser, and its ema/) reads back with finite values."""
    import torch
    from safetensors import safe_open

    files = [p for p in Path(ckpt).rglob("*.safetensors") if not p.name.startswith(("optimizer", "rng-"))]
    try:
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                if not all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys()):
                    return False
    except Exception:  # safetensors' own error type, or OSError: a damaged file is no good checkpoint either
        return False
    return bool(files)


def checkpoint_kind(ckpt: str | Path) -> str:
    """'lora' or 'full'."""
    ckpt = Path(ckpt)
    if (ckpt / LORA_FILE).exists():
        return "lora"
    if denoiser_dir(ckpt) is not None:
        return "full"
    raise CheckpointError(f"{ckpt} holds neither unet/, transformer/ nor {LORA_FILE}")


def denoiser_dir(folder: str | Path) -> Path | None:
    """The denoiser subfolder (unet/ or transformer/, with its config.json) of a checkpoint or pipeline folder."""
    for name in DENOISER_DIRS:
        if (Path(folder) / name / "config.json").exists():
            return Path(folder) / name
    return None


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all) and leftovers of killed saves."""
    remove_stale(Path(run_dir) / "checkpoints")
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------------------------
# LoRA in the diffusers format

def save_lora(model: Any, out_dir: str | Path, pipeline_cls: Any, state_dict: dict | None = None,
              denoiser: str = "unet") -> Path:
    """Write the denoiser's LoRA adapter as `pytorch_lora_weights.safetensors`, loadable by `pipe.load_lora_weights`.

    pipeline_cls: the diffusers pipeline class of the model's family (`Family.lora_pipeline`), which writes the file
    with keys prefixed by the component (`unet.`, `transformer.`). denoiser: that component (`Family.denoiser`).
    state_dict: the full denoiser state dict when it had to be gathered from shards (FSDP, ZeRO-3).
    Keys are written as diffusers' own training scripts write them: UNet LoRAs in the diffusers layout
    (`lora.down`/`lora.up`), transformer LoRAs in peft's (`lora_A`/`lora_B`)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = _adapter_layers(model, state_dict, get_peft_model_state_dict)
    if denoiser == "unet":
        layers = convert_state_dict_to_diffusers(layers)
    pipeline_cls.save_lora_weights(
        str(out_dir), safe_serialization=True, **{
            f"{denoiser}_lora_layers": layers,
            f"{denoiser}_lora_adapter_metadata": _sorted_sets(model.peft_config["default"].to_dict())},
    )
    path = Path(out_dir) / LORA_FILE
    _sort_header_metadata(path)
    return path


FSDP_PREFIX = "_fsdp_wrapped_module."  # in the module names of a model whose blocks torch's FSDP1 wrapped


def _adapter_layers(model: Any, state_dict: dict | None, peft_state_dict: Any) -> dict:
    """The adapter's entries of `state_dict` (the model's own when None), keyed as peft keys them.

    peft (0.21, the version installed here) picks them by the model's module names; in a model whose blocks are FSDP
    units those carry FSDP's prefix, while the full state dict gathered from the shards does not (FSDP strips it), so
    nothing would match and an empty LoRA would be refused. The gathered entries are keyed by the module names for
    peft, and the prefix is taken out of what it returns."""
    modules = {name.replace(FSDP_PREFIX, ""): name for name, _ in model.named_modules() if FSDP_PREFIX in name}
    if state_dict is None or not modules:
        return peft_state_dict(model, state_dict=state_dict)
    live = {}
    for key, value in state_dict.items():
        owner, _, leaf = key.rpartition(".")
        live[f"{modules[owner]}.{leaf}" if owner in modules else key] = value
    return {k.replace(FSDP_PREFIX, ""): v for k, v in peft_state_dict(model, state_dict=live).items()}


def _sorted_sets(value: Any) -> Any:
    """value with every set (peft's target_modules) as a sorted list: diffusers writes a set in its iteration order,
    which follows the process's string hash seed, so identical adapters would give files differing in metadata."""
    if isinstance(value, dict):
        return {k: _sorted_sets(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return value


def sort_headers(folder: str | Path) -> None:
    """Sort the header metadata of every safetensors file under folder (byte-stable exports, see below)."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        _sort_header_metadata(path)


def _sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted, in place (same length: only the order
    changes). safetensors keeps the metadata in a Rust HashMap, written in a per-process random order."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for a reordering; never shift the tensor data
            raise CheckpointError(f"{path}: cannot rewrite its header in place")
        f.seek(8)
        f.write(text.ljust(size))  # safetensors pads headers with spaces


def load_lora_into(model: Any, lora_file: str | Path, denoiser: str = "unet") -> None:
    """Load a LoRA file written by save_lora into a denoiser (the pipeline component `denoiser`) that already has
    the 'default' adapter (resume)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    prefix = f"{denoiser}."
    check_weights_file(lora_file)
    weights = load_file(str(lora_file))
    sd = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError(f"{lora_file} holds no LoRA weights for the {denoiser} (no '{prefix}' keys); was it "
                              "trained on another model family?")
    # peft-layout keys (lora_A/B) pass through the conversion unchanged
    try:
        result = set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(sd), adapter_name="default")
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        detail = next(ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln)
        raise CheckpointError(f"{lora_file} holds LoRA weights of other shapes than this model's ({detail[:240]}): it "
                              "was trained with another --lora-rank or model. Fix: use the same --lora-rank and "
                              "--model as that run, or start a new run with another --out") from None
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise CheckpointError(f"{lora_file} does not match this model's LoRA layers (e.g. {unexpected[:3]}); "
                              "was it trained with another --lora-rank or model?")
