"""MaPO: margin-aware preference optimization without a reference model (Hong et al. 2024, arXiv 2406.06424).

Official code: mapo-t2i/mapo, `utils.compute_loss`. With the per-pair denoising errors e_w, e_l of the policy
(the same ones DPO uses) and a constant s (their `snr_value`, 0.5):

    f(e)     = s*e / (exp(s*e) - 1)                  # decreasing in e: a lower error gives higher odds
    log_odds = f(e_w) - f(e_l)
    loss     = mean(e_w) - beta * mean(logsigmoid(T * log_odds))

beta is their `beta_mapo` (paper and code default 0.1: pass `--beta 0.1`, NOT the DPO default 5000) and T the
number of train timesteps, which spreads the margin over the whole denoising process (their comment). The first
term is plain SFT on the winners, so no reference model is needed: no frozen copy in memory and no reference
forward: with a backward costing about two forwards, a step costs about 3 forwards instead of DPO's 4 (a quarter
less compute), and a full fine-tune holds one denoiser copy fewer.

Step 0: there is no reference, so the value depends on the data: mean(e_w) + beta*mean(-logsigmoid(T*log_odds)).
With equal errors on winner and loser (no margin yet) it is mean(e_w) + beta*ln 2 (0.0693 at beta 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aifeedback.losses.base import LossOutput, common_metrics

SNR_VALUE = 0.5  # the official code's `--snr_value` default, used in the paper's runs
# T when called directly; `aif train` passes its noise scheduler's num_train_timesteps (1000 for SD1.5, SDXL and
# the toy world), so a model trained with another T gets its own.
TRAIN_TIMESTEPS = 1000


def mapo(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor | None, ref_l: torch.Tensor | None,
         beta: float, timesteps: int = TRAIN_TIMESTEPS, snr_value: float = SNR_VALUE) -> LossOutput:
    """The MaPO loss (module docstring); the reference errors, when given, are only logged.

    Metrics: margin_loss (the -beta*mean(logsigmoid) term, so loss = mse_model_w + margin_loss), log_odds (its
    mean) and implicit_acc (share of pairs whose log-odds prefer the winner; a tie counts 0.5).
    """
    log_odds = _odds(model_w, snr_value) - _odds(model_l, snr_value)
    margin_loss = -beta * F.logsigmoid(log_odds * timesteps).mean()
    loss = model_w.mean() + margin_loss
    acc = (log_odds > 0).float() + 0.5 * (log_odds == 0).float()
    metrics = common_metrics(model_w, model_l, ref_w, ref_l)
    metrics.update(margin_loss=margin_loss.detach(), log_odds=log_odds.mean().detach(),
                   implicit_acc=acc.mean().detach())
    return LossOutput(loss, metrics)


def _odds(err: torch.Tensor, s: float) -> torch.Tensor:
    """s*e / (exp(s*e) - 1), with its limit 1 at e = 0 (the official exp(x) - 1 would give 0/0 = NaN there);
    expm1 keeps the small-x digits that exp(x) - 1 loses."""
    x = s * err
    safe = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.ones_like(x), safe / torch.expm1(safe))
