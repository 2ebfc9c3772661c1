"""The trainer's parts that any recipe training a denoiser builds the same way (`aif train`'s `TrainRecipe`, and a
second recipe such as online RL): the accelerator, the frozen text encoders and VAE, the trained denoiser (LoRA
adapters or all of it) with its frozen reference, the optimizer with its lr schedule, the moving average of the
weights and the tracker.

Each part is a function of a config holding the trainer's option names (`TrainConfig`'s: mixed_precision,
grad_accum, trackers, lora_rank, lora_alpha, gradient_checkpointing, optimizer, lr_schedule, warmup_steps,
max_steps, weight_decay, ema_decay); a recipe calls them in its own order (the order fixes the RNG streams).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from transformers.optimization import Adafactor

from aifeedback.config import to_dict
from aifeedback.errors import AifError
from aifeedback.families.base import Family
from aifeedback.families.quantize import keep_frozen_out_of_ddp, place
from aifeedback.stages.train_ema import WeightsEMA

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # --mixed-precision -> storage


def make_accelerator(cfg: Any, out: Path) -> Accelerator:
    """The run's accelerator: mixed precision, gradient accumulation, tracker, logs under `out`/logs."""
    # accelerate keeps its mixed-precision state in a process-wide singleton; forget a previous in-process run's
    # (the distributed environment itself, PartialState, is kept).
    AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
        # On a host without a GPU, processes started by `accelerate launch --multi_gpu` / torchrun join as CPU.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        log_with=None if cfg.trackers == "none" else cfg.trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def init_trackers(accelerator: Accelerator, cfg: Any, project: str) -> None:
    """Start the tracker (--trackers) with the config's plain options as its hyperparameters."""
    if cfg.trackers != "none":
        config = {k: v for k, v in to_dict(cfg).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(project, config=config)


def frozen_parts(pipe: Any, family: Family, device: Any, weight_dtype: torch.dtype, custom_vae: bool
                 ) -> tuple[Any, Any]:
    """The text encoders and the VAE, frozen, on the device, in the storage dtype (the family's VAE rule)."""
    text = family.text_encoders(pipe).to(device, weight_dtype)
    vae_dtype = family.vae_dtype(weight_dtype, custom_vae=custom_vae)
    return text, pipe.vae.to(device, vae_dtype).requires_grad_(False).eval()


def denoisers(pipe: Any, family: Family, cfg: Any, device: Any, weight_dtype: torch.dtype, needs_ref: bool
              ) -> tuple[Any, Any]:
    """The trained denoiser (with LoRA adapters when cfg.lora_rank > 0, or all of it) and the frozen reference copy
    (a full fine-tune whose objective needs one; with LoRA the reference is the network with its adapters
    disabled, so None)."""
    model, ref = getattr(pipe, family.denoiser), None
    if cfg.lora_rank > 0:
        place(model.requires_grad_(False), device, weight_dtype)  # a quantized base only moves
        model.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                     init_lora_weights="gaussian", target_modules=family.lora_target_modules(model)))
        cast_training_params(model, dtype=torch.float32)  # LoRA weights train in fp32, the base stays frozen
        keep_frozen_out_of_ddp(model)  # a quantized base's frozen weights: DDP cannot broadcast them
    else:
        model.to(device)  # fp32 master weights; autocast runs the forward in the compute dtype
        if needs_ref:
            if weight_dtype != torch.float32:
                # Start the policy from exactly the weights the compute-dtype reference holds: layers autocast
                # keeps in fp32 (norms) would otherwise differ by the rounding, beta amplifies it, and the first
                # loss would not be ln 2.
                with torch.no_grad():
                    for p in model.parameters():
                        p.copy_(p.to(weight_dtype).float())
            ref = copy.deepcopy(model).requires_grad_(False).to(weight_dtype)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    if ref is not None:
        ref.train()  # same mode as the policy: identical outputs at step 0, so the first loss is exactly ln 2
    return model, ref


def make_optimizer(cfg: Any, params: list, lr: float) -> tuple[Any, Any]:
    """(optimizer, lr schedule): --optimizer over `params` at `lr`, --lr-schedule with --warmup-steps over
    --max-steps."""
    optimizer = _optimizer(cfg, params, lr)
    lr_sched = get_scheduler("constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule,
                             optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
    return optimizer, lr_sched


def _optimizer(cfg: Any, params: list, lr: float):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise AifError("--optimizer adamw8bit needs bitsandbytes (CUDA): pip install 'aifeedback[bnb]'") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=cfg.weight_decay)
    # As the Diffusion-DPO SDXL runs: a fixed lr, no relative steps or parameter scaling.
    return Adafactor(params, lr=lr, weight_decay=cfg.weight_decay, scale_parameter=False, relative_step=False,
                     warmup_init=False, clip_threshold=1.0)


def make_ema(params: list, decay: float, sharded: bool) -> Optional[WeightsEMA]:
    """The moving average of the trained weights (--ema-decay), starting from the initial weights; None without."""
    if not decay:
        return None
    if sharded:  # each process holds a shard: an average of shards would need gathering every step
        raise AifError("--ema-decay is not supported with FSDP/DeepSpeed sharding yet. Fix: drop --ema-decay, "
                       "or train with plain DDP (accelerate launch --multi_gpu)")
    return WeightsEMA(params, decay)
