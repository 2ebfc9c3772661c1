"""Preference objectives, by name: `LOSSES["dpo"]`. Each is a pure function over per-pair denoising errors.

To add an objective: write its function (formula, source and value at step 0 in the docstring) in a module here,
register it below, and test it against a hand computation. `aif train --loss` takes any registered name.
A loss that also needs the number of train timesteps T (MaPO) takes a keyword argument `timesteps`; the trainer
passes the noise scheduler's num_train_timesteps to every loss whose function has it.
An unpaired loss (`unpaired=True`, Diffusion-KTO) trains on single images labelled desirable or not: its function is
(model, ref, desirable, beta) -> LossOutput over per-image errors, and `aif train` feeds it an unpaired dataset.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from aifeedback.registry import Registry


@dataclass(frozen=True)
class Loss:
    """A registered objective; its function is imported only when training runs (the CLI stays light)."""

    name: str
    help: str
    needs_reference: bool  # the loss reads the frozen reference model's errors
    module: str  # defines a function called `name`: (model_w, model_l, ref_w, ref_l, beta) -> LossOutput
    unpaired: bool = False  # trains on single labelled images: (model, ref, desirable, beta) -> LossOutput

    def function(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.name)


LOSSES: Registry[Loss] = Registry("loss", [
    Loss("dpo", "Diffusion-DPO sigmoid loss against the frozen reference (the paper's objective)", True,
         "aifeedback.losses.dpo"),
    Loss("sft", "denoising MSE on the preferred images only (the paper's SFT baseline)", False,
         "aifeedback.losses.dpo"),
    Loss("hinge", "hinge form of Diffusion-DPO, relu(1 - inside), against the frozen reference (diffusers' hinge)",
         True, "aifeedback.losses.dpo"),
    Loss("ipo", "IPO form of Diffusion-DPO, (h - 1/(2 tau))^2 with tau = beta/2, against the frozen reference",
         True, "aifeedback.losses.dpo"),
    Loss("mapo", "MaPO, reference-free: winner MSE + margin on log-odds (Hong et al. 2024; use --beta 0.1)",
         False, "aifeedback.losses.mapo"),
    Loss("kto", "Diffusion-KTO on unpaired images labelled desirable/undesirable (`aif score --unpaired`; Li et al. "
         "2024; use --beta 1000)", True, "aifeedback.losses.kto", unpaired=True),
])


def list_losses() -> dict[str, str]:
    """Loss name -> one-line description."""
    return LOSSES.describe()


def get_loss(name: str) -> tuple[Callable[..., Any], bool]:
    """(loss function, needs_reference) by name; an unknown name lists the valid ones."""
    loss = LOSSES[name]
    return loss.function(), loss.needs_reference
