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

import torch
import torch.nn.functional as F

from aifeedback.losses.base import LossOutput, common_metrics


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
    metrics = common_metrics(model_w, model_l, ref_w, ref_l)
    metrics.update(implicit_acc=acc.mean().detach(), reward_margin=inside.mean().detach())
    return LossOutput(loss, metrics)


def sft(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor | None, ref_l: torch.Tensor | None,
        beta: float) -> LossOutput:
    """Supervised fine-tuning baseline: plain denoising MSE on the winners (losers and beta are not used).

    The loser error is still reported, and when a reference is given the same implicit accuracy as DPO is
    reported, so SFT and DPO runs can be compared on one chart.
    """
    loss = model_w.mean()
    metrics = common_metrics(model_w, model_l, ref_w, ref_l)
    if ref_w is not None:
        inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
        acc = (inside > 0).float() + 0.5 * (inside == 0).float()
        metrics.update(implicit_acc=acc.mean().detach(), reward_margin=inside.mean().detach())
    return LossOutput(loss, metrics)
