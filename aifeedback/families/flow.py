"""Flow-matching (rectified flow) transformer families: SD3 / SD3.5 and FLUX.1 share the training side here.

What diffusers' own training scripts do (examples/dreambooth/train_dreambooth_lora_sd3.py and _flux.py), with the
DPO twist that winner and loser share the noise and sigma (Flow-DPO, Liu et al. 2025, arXiv 2501.13918):
- sigma: `u = compute_density_for_timestep_sampling(scheme, n, logit_mean, logit_std, mode_scale)` (diffusers'
  training_utils), `index = int(u * num_train_timesteps)`, timestep = `scheduler.timesteps[index]`, sigma = the
  scheduler's sigma at that timestep; the scheduler is a fresh FlowMatchEulerDiscreteScheduler from the pipeline's
  scheduler config (its shift included), never the sampling one, whose `set_timesteps` moves the grid;
- noising: x_t = (1 - sigma) x0 + sigma noise; target: the velocity noise - x0;
- loss weighting: `compute_loss_weighting_for_sd3(scheme, sigma)` per sample (uniform for logit_normal and mode,
  whose sampling density already does the weighting).
Latents are the VAE's, `(z - shift_factor) * scaling_factor` (families/base.py encode_images).

The target is the velocity, as those scripts with `--precondition_outputs 0`. That is not the default of diffusers'
SD3 full fine-tuning script (examples/dreambooth/train_dreambooth_sd3.py: `--precondition_outputs 1`), which maps
the prediction to an x0 estimate `x_t - sigma * v_pred` and regresses x0: its error is `sigma^2 * |v_pred - (noise -
x0)|^2`, sigma^2 times ours. The velocity error is the one Flow-DPO's DPO term is written on.

Where the weights act: `loss_weights` multiplies every per-sample error (policy and reference, winner and loser;
losses/base.py `denoising_mse`) BEFORE the DPO loss takes the winner-loser difference. Winner and loser share sigma,
so the DPO term becomes `-beta/2 * w(sigma) * ((err_w - ref_w) - (err_l - ref_l))`: Flow-DPO with an effective beta
of `beta * w(sigma)`. Flow-DPO (Liu et al. 2025) weights nothing: unweighted velocity errors, beta constant over
timesteps. With the shipped schemes (SD3 `logit_normal`, FLUX `none`) w = 1 and the loss is exactly Flow-DPO's; a
subclass that sets `sigma_sqrt` (w = sigma^-2, largest at low noise) or `cosmap` (w = 2 / (pi (1 - 2 sigma + 2
sigma^2)), 0.64..1.27) trains with a timestep-dependent beta.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from aifeedback.families.base import Family


class FlowFamily(Family):
    """Flow-matching transformer families. A subclass sets the facts of `Family` (resolution, guidance, lora targets,
    lora_pipeline) and implements `matches`, `text_encoders`, `encode_prompts` and `predict`; it may override the
    timestep-sampling class variables below (the defaults are diffusers' SD3 script's).

    `predict` gets the noisy latents in the VAE's (B, C, h, w) layout and timesteps in the scheduler's units (0..1000,
    as the SD3 transformer takes them) and must return the velocity in that layout: a family whose transformer wants
    another form (FLUX: 2x2-packed latents, position ids, t / 1000, a guidance value) converts inside `predict`."""

    denoiser = "transformer"
    weighting_scheme: ClassVar[str] = "logit_normal"  # sigma_sqrt | logit_normal | mode | cosmap | none
    logit_mean: ClassVar[float] = 0.0
    logit_std: ClassVar[float] = 1.0
    mode_scale: ClassVar[float] = 1.29
    linspace_sigmas: ClassVar[bool] = False  # sampling: the pipeline passes linspace sigmas (sampling_schedule)

    def noise_scheduler(self, pipe: Any) -> Any:
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def training_noise(self, scheduler: Any, latents: torch.Tensor, groups: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(latents) // groups
        noise = torch.randn_like(latents[:n]).repeat(groups, *[1] * (latents.dim() - 1))
        t = self.sample_timesteps(scheduler, n).to(latents.device).repeat(groups)
        sigma = flow_sigmas(scheduler, t).to(latents).view(-1, *[1] * (latents.dim() - 1))
        return (1 - sigma) * latents + sigma * noise, t, noise - latents

    def sample_timesteps(self, scheduler: Any, n: int) -> torch.Tensor:
        """n training timesteps drawn as diffusers' SD3/FLUX scripts draw them (on the CPU, from the global RNG,
        which checkpoints save)."""
        u = compute_density_for_timestep_sampling(self.weighting_scheme, n, logit_mean=self.logit_mean,
                                                  logit_std=self.logit_std, mode_scale=self.mode_scale)
        steps = scheduler.config.num_train_timesteps
        # u is in [0, 1]; the "mode" density reaches 1 exactly when its uniform draw is 0, one past the last index.
        return scheduler.timesteps[(u * steps).long().clamp(0, steps - 1)]

    def loss_weights(self, scheduler: Any, t: torch.Tensor) -> torch.Tensor:
        return compute_loss_weighting_for_sd3(self.weighting_scheme, flow_sigmas(scheduler, t)).float().to(t.device)

    def sampling_schedule(self, config: Any, image_seq_len: int, steps: int) -> dict[str, Any]:
        """The `set_timesteps` arguments the family's pipeline samples `steps` steps of an image of `image_seq_len`
        2x2 latent patches with: mu from `calculate_shift` (used where the scheduler shifts by image size: FLUX.1-dev,
        Qwen-Image), and the sigmas linspace(1, 1/steps, steps) where the pipeline passes them (`linspace_sigmas`;
        SD3's pipeline keeps the scheduler's own grid)."""
        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        return {"mu": mu, **({"sigmas": np.linspace(1.0, 1 / steps, steps).tolist()} if self.linspace_sigmas else {})}


def flow_sigmas(scheduler: Any, t: torch.Tensor) -> torch.Tensor:
    """The scheduler's sigma at each timestep of t (on t's device): the first grid position holding it, as diffusers'
    training scripts look it up."""
    grid = scheduler.timesteps.to(t.device)
    hits = grid[None, :] == t[:, None]
    if not bool(hits.any(dim=1).all()):
        raise ValueError("flow_sigmas: a timestep is not on the scheduler's training grid (use sample_timesteps)")
    return scheduler.sigmas.to(t.device)[hits.float().argmax(dim=1)]
