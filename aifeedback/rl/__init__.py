"""Online RL algorithms, by name: `ALGORITHMS["grpo"]`. The pure numerical cores live in this package's modules:
`advantages.py` (per-prompt group advantages, combining several rewards), `sde.py` (stochastic denoising steps with
their log-probs: the flow SDE step and DDPO's DDIM step), `objectives.py` (the per-step losses).

The `aif rl` stage (`stages/rl.py`) samples, scores and updates with them (grpo, nft and awm, flow and UNet
families). This module is light (no torch): the command line and a stage config read the registry (names, help, which
family kinds an algorithm supports) before any model code is imported. A family kind is 'flow' (`families/flow.py`
`FlowFamily`: SD3, FLUX) or 'unet' (`families/base.py` `UNetFamily`: SD1.5, SDXL and their variants).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from aifeedback.errors import AifError
from aifeedback.registry import Registry

FAMILY_KINDS = ("flow", "unet")
AWM_WEIGHTINGS = ("uniform", "t", "t2", "huber", "ghuber")  # `objectives.matching_log_prob`'s time weightings


@dataclass(frozen=True)
class Algorithm:
    """A registered online RL algorithm; its loss function is imported only when training runs."""

    name: str
    help: str
    formula: str  # the objective in one line (the function's docstring has the full form)
    source: str  # paper and the reference code it is tested against
    kinds: dict[str, str]  # supported family kind -> how it is applied to that kind
    refused: dict[str, str]  # unsupported family kind -> why
    module: str = "aifeedback.rl.objectives"  # defines a function called `name` returning a LossOutput

    def function(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.name)

    def check_kind(self, kind: str, family: str = "") -> None:
        """Raise AifError naming the family and the reason when this algorithm does not support its kind."""
        if kind in self.kinds:
            return
        which = f"family '{family}' ({kind})" if family else f"family kind '{kind}'"
        why = self.refused.get(kind, f"it supports {', '.join(self.kinds)} families only")
        ok = [a.name for a in ALGORITHMS.values() if kind in a.kinds]
        raise AifError(f"--algorithm {self.name} does not support {which}: {why}. "
                       f"Use {' or '.join(ok) if ok else 'another model'}.")


ALGORITHMS: Registry[Algorithm] = Registry("algorithm", [
    Algorithm(
        "grpo", "Flow-GRPO on flow families / DDPO on UNet families: SDE or DDIM(eta=1) sampling with per-step "
        "log-probs, PPO-clipped ratio, KL to the reference",
        "mean(max(-A r, -A clip(r, 1-eps, 1+eps))) + beta * mean((mu - mu_ref)^2) / (2 std^2), "
        "r = exp(logp - logp_old)",
        "Flow-GRPO (arXiv 2505.05470; yifan123/flow_grpo sde_step_with_logprob, train_sd3.py); DDPO (arXiv "
        "2305.13301; kvablack/ddpo-pytorch ddim_step_with_logprob)",
        {"flow": "SDE sampling with the same marginals as the ODE (sde.flow_sde_step, noise level, optional SDE "
                 "window with Euler steps elsewhere)",
         "unet": "DDIM with eta = 1 as the stochastic policy (sde.ddim_step), per-step Gaussian log-probs"},
        {}),
    Algorithm(
        "nft", "DiffusionNFT: trains on the forward process of the final images (any sampler collects them); "
        "implicit positive/negative policies around the sampling policy",
        "c * mean(r e(v+) / b + (1 - r) e(v-) / b) + kl_beta * mean((v - v_ref)^2), v+ = b v + (1-b) v_old, "
        "v- = (1+b) v_old - b v, e = adaptive x0 error",
        "DiffusionNFT (arXiv 2509.16117; NVlabs/DiffusionNFT scripts/train_nft_sd3.py)",
        {"flow": "x_t = (1 - t) x0 + t noise, x0 = x_t - t v (upstream's form)",
         "unet": "the DDPM forward process x_t = sqrt(a) x0 + sqrt(1-a) eps with x0 from the epsilon or v "
                 "prediction (objectives.ddpm_x0_coefficients): mixing predictions is mixing x0 predictions (both "
                 "affine, weights summing to 1), so the loss is the same whatever the parameterisation; the KL "
                 "term is on the model's own output (epsilon or v)"},
        {}),
    Algorithm(
        "awm", "Advantage Weighted Matching: the pretraining flow-matching / denoising loss weighted by the "
        "advantage (PPO-clipped ratio of the matching likelihood)",
        "mean(max(-A r, -A clip(r, 1-eps, 1+eps))) + beta * mean((v - v_ref)^2), r = exp(l - l_old), "
        "l = -weighted mean((pred - target)^2)",
        "AWM (arXiv 2509.25050; scxue/advantage_weighted_matching scripts/train_sd3_awm.py)",
        {"flow": "target noise - x0 at x_t = (1 - t) x0 + t noise, t = sigma for the time weighting",
         "unet": "the family's denoising target (epsilon or v) at the DDPM forward process, t = timestep / T "
                 "for the time weighting (the paper's Theorem 1 is stated for score matching: DDPO is "
                 "noisy denoising score matching)"},
        {}),
])


def list_algorithms() -> dict[str, str]:
    """Algorithm name -> one-line description (one per line in `aif rl --help`)."""
    return ALGORITHMS.describe()
