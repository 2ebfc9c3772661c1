"""What every loss shares: its return type, the per-pair denoising error it is computed from, common metrics."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    metrics: dict[str, torch.Tensor]  # detached scalars for logging


def denoising_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error over all but the batch dimension, in float32, times each sample's weight
    (`weights`, shape (N,), e.g. `Family.loss_weights` or min-SNR weights; None = uniform, the plain error).

    The weight multiplies the error itself, so a paired loss sees weighted errors: DPO's inside term
    `-beta/2 * ((w e_w - w ref_w) - (w e_l - w ref_l))` with the weight w shared by winner and loser (same timestep)
    is `-(beta w)/2 * ((e_w - ref_w) - (e_l - ref_l))`, i.e. an effective beta `beta * w(t)` that varies with the
    timestep unless w is constant. Flow-DPO and Diffusion-DPO use unweighted errors (constant beta); the shipped
    flow families' weights are 1 (see families/flow.py)."""
    mse = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.dim())))
    return mse if weights is None else mse * weights.to(mse)


def common_metrics(model_w, model_l, ref_w, ref_l) -> dict[str, torch.Tensor]:
    """The mean errors every loss logs (mse_model_w/l, and mse_ref_w/l when there is a reference), detached."""
    out = {"mse_model_w": model_w.mean(), "mse_model_l": model_l.mean()}
    if ref_w is not None:
        out.update(mse_ref_w=ref_w.mean(), mse_ref_l=ref_l.mean())
    return {k: v.detach() for k, v in out.items()}
