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

The hinge and IPO forms below replace only the outer function of the same margin (diffusers'
examples/research_projects/diffusion_dpo/train_diffusion_dpo.py has both for SD1.5, its `logits` being our
`ref_diff - model_diff` and its `beta_dpo` half our beta).
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
    inside = _inside(model_w, model_l, ref_w, ref_l, beta)
    return LossOutput(-F.logsigmoid(inside).mean(), _metrics(inside, model_w, model_l, ref_w, ref_l))


def hinge(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
          beta: float) -> LossOutput:
    """Hinge (SLiC-style) form of Diffusion-DPO: loss = mean(relu(1 - inside)), `inside` and beta as in `dpo`.

    Source: diffusers' train_diffusion_dpo.py `--loss_type hinge` (relu(1 - beta_dpo * logits), the same value
    with beta_dpo = beta / 2). Step 0 (policy == reference, inside = 0): exactly 1.0. A pair stops contributing
    once its margin passes 1 (no pull beyond it, unlike the sigmoid's ever-shrinking one).
    """
    inside = _inside(model_w, model_l, ref_w, ref_l, beta)
    return LossOutput(F.relu(1 - inside).mean(), _metrics(inside, model_w, model_l, ref_w, ref_l))


def ipo(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
        beta: float) -> LossOutput:
    """IPO form (Azar et al. 2023, arXiv 2310.12036, eq. 17): loss = mean((h - 1/(2*tau))^2).

    Parameterisation: the usual one (IPO paper, TRL, diffusers' `--loss_type ipo`): the square is on the margin
    BEFORE any beta scaling, h = ref_diff - model_diff (diffusers' `logits`), and beta's role is IPO's tau, the
    regularisation: tau = beta / 2 (diffusers' beta_dpo, since our beta keeps the paper's 0.5). On `dpo`'s
    `inside` (= tau * h) this is ((inside - 1/2) / tau)^2: IPO pulls every pair's DPO logit to 1/2 rather than
    to infinity. (Reading diffusers' intent: its IPO line uses `args.beta`, which does not exist, so it crashes;
    `args.beta_dpo` is the one defined. Squaring `inside` itself would apply beta twice and pin the policy to the
    reference.) Step 0 (h = 0): (1/(2*tau))^2 = 1/beta^2, 4e-8 at beta 5000: tiny, so the gradient is tiny too;
    Adam-type optimizers normalise its scale, plain SGD would need a far larger lr than DPO.
    """
    tau = 0.5 * beta
    h = (ref_w - ref_l) - (model_w - model_l)
    loss = (h - 1 / (2 * tau)).pow(2).mean()
    return LossOutput(loss, _metrics(_inside(model_w, model_l, ref_w, ref_l, beta), model_w, model_l, ref_w, ref_l))


def sft(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor | None, ref_l: torch.Tensor | None,
        beta: float) -> LossOutput:
    """Supervised fine-tuning baseline: plain denoising MSE on the winners (losers and beta are not used).

    The loser error is still reported, and when a reference is given the same implicit accuracy as DPO is
    reported, so SFT and DPO runs can be compared on one chart.
    """
    loss = model_w.mean()
    if ref_w is None:
        return LossOutput(loss, common_metrics(model_w, model_l, ref_w, ref_l))
    return LossOutput(loss, _metrics(_inside(model_w, model_l, ref_w, ref_l, beta), model_w, model_l, ref_w, ref_l))


def _inside(model_w, model_l, ref_w, ref_l, beta: float) -> torch.Tensor:
    """Per pair, the DPO logit of the model's preference for the winner (module docstring)."""
    return -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))


def _metrics(inside, model_w, model_l, ref_w, ref_l) -> dict[str, torch.Tensor]:
    """common_metrics plus implicit_acc (share of pairs preferring the winner; an exact tie, as at step 0, counts
    0.5) and reward_margin (the mean of `inside`)."""
    acc = (inside > 0).float() + 0.5 * (inside == 0).float()
    metrics = common_metrics(model_w, model_l, ref_w, ref_l)
    metrics.update(implicit_acc=acc.mean().detach(), reward_margin=inside.mean().detach())
    return metrics
