"""Diffusion-KTO: Kahneman-Tversky optimisation on unpaired images (Li et al. 2024, arXiv 2404.04465).

Official code: jacklishufan/diffusion-kto, `train_kto_sd_v1.5.py` (`--loss kto --halo sigmoid`, the paper's runs).
Each training example is ONE image with a label, desirable (y = 1) or undesirable (y = 0), no pair. With the
per-image denoising errors of the policy (e) and of the frozen reference (e_ref), at one shared noise and timestep:

    g_i = e_ref_i - e_i                                # implicit reward: > 0 when the policy denoises it better
    z   = max(0, mean_i g_i), detached                 # the reference point, a KL estimate from the batch (eq. 8)
    h_i = sigmoid(s_i * beta * (g_i - z)),  s_i = +1 if desirable else -1
    loss = mean_i w_i * (1 - h_i),  w_i = lambda_D if desirable else lambda_U

So a desirable image pulls its reward above the batch's reference point, an undesirable one pushes it below.
beta is the official `--beta_dpo` as is (no 0.5 factor; its default, used by the paper's script, is 1000);
lambda_D = lambda_U = 1 (their `--lambda_d_kto`, `--lambda_u_kto` defaults). The official code averages z over the
processes too (8 images in its 4-GPU runs); here z is the mean over the micro-batch the loss sees, so use a
--batch-size of a few images (a single image's z is its own g when positive, which zeroes its value's margin but
not its gradient: z is detached).

Step 0: the policy equals the reference, so g = 0, z = 0, h = 1/2 and the loss is 0.5 * mean(w) = 0.5 exactly.
"""

from __future__ import annotations

import torch

from aifeedback.losses.base import LossOutput


def kto(model: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, beta: float,
        desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> LossOutput:
    """The Diffusion-KTO loss (module docstring) over per-image errors `model`, `ref` (shape (B,)) and boolean
    labels `desirable` (B,).

    Metrics: mse_model / mse_ref (mean errors), kl (the reference point z), reward_desirable / reward_undesirable
    (mean g of each kind; 0 when the batch has none), desirable_share, implicit_acc (share of images on the side
    of z their label asks for; exactly on it, as at step 0, counts 0.5).
    """
    desirable = desirable.to(device=model.device, dtype=torch.bool)
    g = ref - model
    z = g.mean().detach().clamp(min=0)
    sign = desirable.float() * 2 - 1
    margin = sign * beta * (g - z)
    w = torch.where(desirable, desirable_weight, undesirable_weight).to(model.dtype)
    loss = (w * (1 - torch.sigmoid(margin))).mean()
    acc = (margin > 0).float() + 0.5 * (margin == 0).float()
    metrics = {"mse_model": model.mean(), "mse_ref": ref.mean(), "kl": z, "implicit_acc": acc.mean(),
               "reward_desirable": _mean_where(g, desirable), "reward_undesirable": _mean_where(g, ~desirable),
               "desirable_share": desirable.float().mean()}
    return LossOutput(loss, {k: v.detach() for k, v in metrics.items()})


def _mean_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)
