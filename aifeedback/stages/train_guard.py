"""The non-finite guard of a training run: an update whose loss or gradient is NaN/inf is skipped (--skip-nonfinite
allows it so many times) or stops the run with the last good checkpoint, and weights grown non-finite are never
written to a checkpoint. Every process takes the same decision from the same all-reduced flags. And the gradient
clipping whose norm the guard checks (`clip_gradients`: the norm over every process, FSDP included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from aifeedback.stages.train_resume import nonfinite_error


def clip_gradients(accelerator: Any, model: Any, params: list, max_norm: float) -> torch.Tensor:
    """Clip the gradients of the trained `params` of the prepared `model` to `max_norm` (inf: none); returns their
    norm over every process. Under FSDP1 this is the FSDP model's own clip_grad_norm_ (its flat shards hold the
    trained parameters and the frozen ones, which have no gradient): accelerate uses that only when it is given
    every parameter of the model, and with a subset (LoRA) it clips each process's shard by that shard's norm, so
    the norm would be one process's and the clipping would differ from DDP's."""
    from accelerate.utils import DistributedType

    acc = accelerator
    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        acc.unscale_gradients()
        return model.clip_grad_norm_(max_norm)
    return acc.clip_grad_norm_(params, max_norm)


def finite_update(accelerator: Any, grad_norm: torch.Tensor, losses_finite: bool, state: dict[str, Any], step: int,
                  skip_limit: int, out: Path, say: Callable[[str], None]) -> bool:
    """Whether this optimizer step's loss (every micro-step, every process) and gradient are finite. If not, the
    update is skipped (`state["skipped_nonfinite"]` counts them, up to `skip_limit`) or the run stops with the last
    good checkpoint: a non-finite update would poison every weight and every later checkpoint. Under fp16 an
    infinite gradient is the grad scaler's business (it skips that step and lowers its scale), so only the loss is
    checked then. `step` is the step this update would make."""
    acc, world = accelerator, accelerator.num_processes
    bad_grad = acc.scaler is None and not bool(torch.isfinite(grad_norm))
    flags = acc.reduce(torch.tensor([float(not losses_finite), float(bad_grad)], device=acc.device),
                       reduction="sum")
    bad_losses, bad_grads = (int(v) for v in flags.tolist())
    if bad_losses + bad_grads == 0:  # every process takes the same decision from the same sums
        return True
    # One process's NaN loss reaches every gradient through the all-reduce: count the losses, the root cause.
    what = "the gradient is not finite (NaN or inf)"
    if bad_losses:
        what = "the loss is not finite (NaN or inf)" + (f" on {bad_losses} of {world} processes" if world > 1 else "")
    state["skipped_nonfinite"] = state.get("skipped_nonfinite", 0) + 1
    if state["skipped_nonfinite"] > skip_limit:
        raise nonfinite_error(out, f"step {step}: {what}; the run stopped before that update, so no checkpoint "
                              "holds it")
    say(f"step {step}: {what}; update skipped ({state['skipped_nonfinite']} of --skip-nonfinite {skip_limit})")
    if acc.scaler is not None:
        acc.scaler.update()  # clip_grad_norm_ unscaled the gradients: the scaler expects an update before the next
    return False


def check_finite_weights(accelerator: Any, params: list, out: Path, step: int) -> None:
    """Refuse to checkpoint weights holding NaN or inf on any process (a collective: every process calls it)."""
    bad = accelerator.reduce(torch.stack([(~torch.isfinite(p.detach())).any() for p in params]).any().float()
                             .reshape(1), reduction="sum")
    if bad.item():  # every update was finite, so only weights grown past the dtype's range get here
        raise nonfinite_error(out, f"step {step}: the trained weights hold NaN or inf values, so no checkpoint was "
                              "written", skip=False)
