"""Preference losses for diffusion models: pure tensor functions over per-pair denoising errors.

Every loss takes the per-pair mean squared denoising errors (shape (B,), one value per pair, averaged over C, H, W)
of the policy and the reference on the winner (w) and loser (l) images, all computed with one shared noise and
timestep per pair, and returns (loss, metrics). Keeping the network out of here makes the objective unit-testable
against a hand computation.

Diffusion-DPO (Wallace et al. 2023, eq. 14), with the paper's 0.5 factor kept explicit:

    inside = -0.5 * beta * ((mse_w - mse_l) - (ref_w - ref_l))
    loss   = mean(-logsigmoid(inside))          # mean OUTSIDE the logsigmoid: one sigmoid per pair

Convention: `beta` is the paper's beta WITH the 0.5 factor, so beta 5000 (SDXL) and 2000 (SD1.5) reproduce the
paper. Code that folds the 0.5 into beta uses half our value (its 2500 == our 5000).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    metrics: dict[str, torch.Tensor]  # detached scalars for logging


def denoising_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all but the batch dimension, in float32."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.dim())))


def _common_metrics(model_w, model_l, ref_w, ref_l) -> dict[str, torch.Tensor]:
    out = {"mse_model_w": model_w.mean(), "mse_model_l": model_l.mean()}
    if ref_w is not None:
        out.update(mse_ref_w=ref_w.mean(), mse_ref_l=ref_l.mean())
    return {k: v.detach() for k, v in out.items()}


def dpo(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
        beta: float) -> LossOutput:
    """Diffusion-DPO sigmoid loss (see module docstring for the beta convention).

    implicit_acc is the share of pairs whose implicit reward prefers the winner; an exact tie (as at step 0, where
    policy == reference) counts 0.5. reward_margin is the mean of `inside`, the logit of the model's preference.
    """
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    loss = -F.logsigmoid(inside).mean()
    acc = (inside > 0).float() + 0.5 * (inside == 0).float()
    metrics = _common_metrics(model_w, model_l, ref_w, ref_l)
    metrics.update(implicit_acc=acc.mean().detach(), reward_margin=inside.mean().detach())
    return LossOutput(loss, metrics)


def sft(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor | None, ref_l: torch.Tensor | None,
        beta: float) -> LossOutput:
    """Supervised fine-tuning baseline: plain denoising MSE on the winners (losers and beta are not used).

    The loser error is still reported, and when a reference is given the same implicit accuracy as DPO is
    reported, so SFT and DPO runs can be compared on one chart.
    """
    loss = model_w.mean()
    metrics = _common_metrics(model_w, model_l, ref_w, ref_l)
    if ref_w is not None:
        inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
        acc = (inside > 0).float() + 0.5 * (inside == 0).float()
        metrics.update(implicit_acc=acc.mean().detach(), reward_margin=inside.mean().detach())
    return LossOutput(loss, metrics)


# name -> (function, needs a reference model, one-line description)
LOSSES: dict[str, tuple[Callable[..., LossOutput], bool, str]] = {
    "dpo": (dpo, True, "Diffusion-DPO sigmoid loss against the frozen reference (the paper's objective)"),
    "sft": (sft, False, "denoising MSE on the preferred images only (the paper's SFT baseline)"),
}


def list_losses() -> dict[str, str]:
    """Loss name -> description."""
    return {name: desc for name, (_, _, desc) in LOSSES.items()}


def get_loss(name: str) -> tuple[Callable[..., LossOutput], bool]:
    """(loss function, needs_reference) by name; an unknown name lists the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; valid: {', '.join(LOSSES)}")
    fn, needs_ref, _ = LOSSES[name]
    return fn, needs_ref
