"""Per-prompt group advantages and the rule that combines several rewards into one, pure torch.

Group advantage (flow_grpo `flow_grpo/stat_tracking.py` `PerPromptStatTracker.update`, type 'grpo', cleared every
epoch as `scripts/train_sd3.py` does; ddpo-pytorch's tracker is the same idea with a 1e-6 epsilon and a history):

    A_i = (r_i - mean_{j in g(i)} r_j) / (std + 1e-4)

where g(i) is the group of images sampled for the same prompt, std is the population standard deviation (numpy's
`np.std`, ddof 0) of that group's rewards, or with `global_std` of all the epoch's rewards (the shipped Flow-GRPO
configs use global). Computed in float64 as upstream (numpy). Clipping to +-adv_clip_max is applied where upstream
applies it (the training loss clamps each advantage, `train.adv_clip_max` 5); `clip` does the same here, elementwise.

One deliberate difference: a group whose rewards are all equal gets advantages exactly 0. Upstream computes
(r - mean) in floating point, where the mean of equal numbers may be off by one ulp (e.g. three copies of 0.1), which
gives ~1e-13 instead of 0, and its "filter samples whose advantages are all zero" then keeps them.

Several rewards (`--reward pickscore:1.0,aesthetic:0.5`): Flow-GRPO (`flow_grpo/rewards.py` `multi_score`) and TRL's
GRPOTrainer (`_generate_and_score_completions`: gathered rewards_per_func times reward_weights, nansum, then group
mean/std) both sum the RAW rewards with their weights and then normalise the sum per prompt, so a reward with a large
spread (PickScore ~ +-1 around 22) silently outweighs one with a small spread whatever the weights say.
Our rule, as issue 22 asks ("each reward normalised before the sum"):

    r_i = sum_k w_k * (r_k,i - mean_batch(r_k)) / (std_batch(r_k) + 1e-4)        (only when there are >= 2 rewards)

each reward z-scored over the whole gathered batch of the epoch (all prompts, all processes), then weighted and
summed, then the group advantage above. Batch (not per-prompt) statistics keep each reward's between-prompt
information for the group step to remove, and make the weights mean "share of the advantage". With one reward it is
weight * raw reward, as upstream, so a single-reward run is exactly Flow-GRPO's.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

EPS = 1e-4  # flow_grpo's epsilon in the advantage denominator


def group_index(groups: Sequence[Hashable] | torch.Tensor) -> tuple[torch.Tensor, int]:
    """(index of each item's group in first-seen order as a long tensor, number of groups) for prompts or ids."""
    keys = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
    ids: dict[Hashable, int] = {}
    index = [ids.setdefault(k, len(ids)) for k in keys]
    return torch.tensor(index, dtype=torch.long), len(ids)


def _group_stats(rewards: torch.Tensor, index: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """Per item: its group's mean, population std, and whether all of its group's rewards are equal (float64)."""
    n = torch.zeros(count, dtype=torch.float64).index_add_(0, index, torch.ones_like(rewards))
    mean = torch.zeros(count, dtype=torch.float64).index_add_(0, index, rewards) / n
    dev = rewards - mean[index]
    std = (torch.zeros(count, dtype=torch.float64).index_add_(0, index, dev * dev) / n).sqrt()
    lo = torch.full((count,), float("inf"), dtype=torch.float64).scatter_reduce(0, index, rewards, "amin")
    hi = torch.full((count,), float("-inf"), dtype=torch.float64).scatter_reduce(0, index, rewards, "amax")
    return mean[index], std[index], (lo == hi)[index]


def group_advantages(rewards: torch.Tensor, groups: Sequence[Hashable] | torch.Tensor, global_std: bool = False,
                     clip: float | None = None) -> torch.Tensor:
    """Per-item advantages, float32, shape (N,): (r - group mean) / (std + 1e-4), std the group's or with
    `global_std` all N rewards'; a group of equal rewards gives exactly 0; then clamped to +-clip when given.
    `groups` names each item's prompt (strings or ids); items of one prompt may be anywhere in the batch."""
    if rewards.dim() != 1 or len(rewards) != len(groups):
        raise ValueError(f"rewards must be one value per item, shape (N,) with N = len(groups) = {len(groups)}; "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.detach().to("cpu", torch.float64)
    index, count = group_index(groups)
    mean, std, equal = _group_stats(r, index, count)
    if global_std:
        std = r.std(unbiased=False).expand_as(r)
    adv = torch.where(equal, torch.zeros_like(r), (r - mean) / (std + EPS))
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv.float().to(rewards.device)


def all_equal_share(rewards: torch.Tensor, groups: Sequence[Hashable] | torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (flow_grpo's `zero_std_ratio` metric; these groups carry no
    learning signal). Equality is exact (max == min), not upstream's `np.std(group) == 0`, which a one-ulp error in
    the mean can miss."""
    r = rewards.detach().to("cpu", torch.float64)
    index, count = group_index(groups)
    equal = _group_stats(r, index, count)[2]
    per_group = torch.zeros(count, dtype=torch.bool).index_put_((index,), equal)
    return per_group.double().mean().item()


def combine_rewards(rewards: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """One reward per item (float64, shape (N,)) from several named ones, see the module docstring: with one reward
    weight * raw reward (Flow-GRPO's `multi_score` with one entry; a negative weight negates the reward); with more,
    sum_k w_k * (r_k - batch mean) / (batch population std + 1e-4). `rewards` and `weights` name the same rewards."""
    if set(rewards) != set(weights) or not rewards:
        raise ValueError(f"rewards {sorted(rewards)} and weights {sorted(weights)} must name the same rewards")
    if len(rewards) == 1:
        name, values = next(iter(rewards.items()))
        return weights[name] * values.detach().to(torch.float64)
    total = None
    for name, values in rewards.items():
        r = values.detach().to(torch.float64)
        z = (r - r.mean()) / (r.std(unbiased=False) + EPS)
        total = weights[name] * z if total is None else total + weights[name] * z
    return total
