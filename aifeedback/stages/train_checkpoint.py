"""A training run's checkpoints, for any recipe that trains a denoiser: the weights in the diffusers format (a LoRA
file or the denoiser's folder, and the moving average in ema/), the exact-resume state as data (optimizer, lr
schedule, grad scaler, every process's RNG: storage/train_state.py; under FSDP/DeepSpeed accelerate's sharded
files), trainer_state.json, all written under a temporary name and published when complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from accelerate.utils import DistributedType

from aifeedback.families.base import Family
from aifeedback.stages.train_ema import STATE_KEY as EMA_STEPS
from aifeedback.stages.train_ema import WeightsEMA
from aifeedback.storage import checkpoints as ck
from aifeedback.storage.files import write_json
from aifeedback.storage.publish import discard, publish, temporary_path
from aifeedback.storage.sharded_state import check_sharded_files
from aifeedback.storage.train_state import check_format, load_state, save_state


def save_weights(model: Any, folder: Path, sd: Optional[dict], lora: bool, family: Family) -> None:
    """The model's weights in the diffusers format: a LoRA file, or the denoiser's folder (as save_pretrained writes
    it). sd: the full state dict when it had to be gathered from shards (FSDP, ZeRO-3), written by the main process
    alone; the unwrapped model's own state_dict() would then gather again, a collective the others never join."""
    if lora:
        ck.save_lora(model, folder, family.lora_pipeline, state_dict=sd, denoiser=family.denoiser)
    elif sd is None:
        model.save_pretrained(folder / family.denoiser, safe_serialization=True)
    else:  # gathered from shards: diffusers' save_pretrained would ignore sd and call state_dict(), a collective
        from huggingface_hub import save_torch_state_dict

        model.save_config(folder / family.denoiser)
        save_torch_state_dict(sd, folder / family.denoiser, max_shard_size="10GB",  # save_pretrained's files
                              filename_pattern="diffusion_pytorch_model{suffix}.safetensors")


def load_weights(model: Any, folder: Path, lora: bool, family: Family) -> None:
    """Load weights saved by `save_weights` (a checkpoint, or its ema/ folder) into the unwrapped model."""
    if lora:
        ck.load_lora_into(model, folder / ck.LORA_FILE, family.denoiser)
    else:
        for weights in sorted((folder / family.denoiser).glob("*.safetensors")):
            ck.check_weights_file(weights)  # a damaged file: one line naming it
        model.load_state_dict(type(model).from_pretrained(folder, subfolder=family.denoiser).state_dict())


def save_train_state(accelerator: Any, folder: Path, sharded: bool, optimizer: Any, lr_sched: Any, rank: int,
                     main: bool) -> None:
    """The optimizer, lr schedule, grad scaler and every process's RNG as data (storage/train_state.py); under
    FSDP/DeepSpeed accelerate writes the sharded model and optimizer first."""
    acc = accelerator
    if sharded:
        acc.save_state(str(folder))
    save_state(folder, None if sharded else optimizer, lr_sched, acc.scaler, acc.step, rank, main)
    acc.wait_for_everyone()  # every process's random state is written before the main one publishes


def load_train_state(accelerator: Any, folder: Path, sharded: bool, optimizer: Any, lr_sched: Any, rank: int,
                     load_model_weights: Callable[[], None]) -> None:
    """A checkpoint's weights (`load_model_weights()`, or accelerate's sharded files) and save_train_state's files,
    strictly; nothing unpickled beyond plain data."""
    acc = accelerator
    check_format(folder)
    if sharded:
        check_sharded_files(folder)
        if acc.distributed_type == DistributedType.FSDP:
            materialize_optimizer_state(optimizer)
        acc.load_state(str(folder))  # the sharded model and optimizer
    else:
        load_model_weights()
    acc.step = load_state(folder, None if sharded else optimizer, lr_sched, acc.scaler, rank)


def materialize_optimizer_state(optimizer: Any) -> None:
    """Give a fresh optimizer its state (one step with zero gradients at learning rate 0: the weights do not move),
    so that accelerate's FSDP load_state fills it. accelerate (1.x, FSDP1) reads the sharded optimizer files into the
    keys of the live optimizer's state dict, and a fresh optimizer has none, so its moments and step counts would be
    left empty (silently: the resumed run's Adam restarts). Does nothing to an optimizer that has stepped."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    if inner.state:
        return
    params = [p for group in inner.param_groups for p in group["params"] if p.requires_grad and p.numel() > 0]
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in inner.param_groups]
    for group in inner.param_groups:
        group["lr"] = 0.0
    inner.step()
    for group, lr in zip(inner.param_groups, lrs):
        group["lr"] = lr
    inner.zero_grad(set_to_none=True)


def write_checkpoint(accelerator: Any, final: Path, model: Any, *, lora: bool, family: Family, sharded: bool,
                     optimizer: Any, lr_sched: Any, ema: Optional[WeightsEMA], state: dict[str, Any],
                     collect: Optional[Callable[[], dict[str, Any]]] = None) -> bool:
    """Write checkpoint folder `final` (every process calls it): under a temporary name, published when complete
    (--resume only ever sees complete checkpoints). `state` goes to trainer_state.json (with the EMA's update count);
    `collect()`, run by every process after the train state is written (it may hold collectives), adds entries to
    it. Returns whether this process published it (the main one)."""
    acc, main = accelerator, accelerator.is_main_process
    tmp = temporary_path(final)
    if main:
        discard(tmp)  # a killed save's leftover
    acc.wait_for_everyone()
    save_train_state(acc, tmp, sharded, optimizer, lr_sched, acc.process_index, main)
    more = collect() if collect is not None else {}
    sd = acc.get_state_dict(model)  # collective: gathers FSDP / ZeRO shards
    if main:
        unwrapped = acc.unwrap_model(model)
        save_weights(unwrapped, tmp, sd, lora, family)
        extra = {}
        if ema is not None:  # not sharded (train_setup.make_ema), so the unwrapped model holds every weight
            with ema.swapped_in():
                save_weights(unwrapped, tmp / ck.EMA_DIR, None, lora, family)
            extra[EMA_STEPS] = ema.steps
        write_json(tmp / ck.STATE_FILE, dict(state, **extra, **more))
        publish(tmp, final, replace=True)  # atomic: --resume only ever sees complete checkpoints
    return main
