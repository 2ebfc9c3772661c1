"""rl/advantages.py against hand computations and against flow_grpo's PerPromptStatTracker re-derived here."""

import math

import numpy as np
import pytest
import torch

from aifeedback.rl.advantages import all_equal_share, combine_rewards, group_advantages

PROMPTS = ["a", "b", "a", "c", "b", "a"]  # upstream stat_tracking.py's own example
REWARDS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def tracker_reference(prompts, rewards, global_std):
    """flow_grpo PerPromptStatTracker.update(type='grpo') on a cleared tracker, re-derived with numpy."""
    prompts, rewards = np.array(prompts), np.array(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    for p in np.unique(prompts):
        group = rewards[prompts == p]
        std = (np.std(rewards) if global_std else np.std(group)) + 1e-4
        out[prompts == p] = (group - np.mean(group)) / std
    return out


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor(REWARDS), PROMPTS)
    std_a = math.sqrt(((1 - 10 / 3) ** 2 + (3 - 10 / 3) ** 2 + (6 - 10 / 3) ** 2) / 3)  # population std of a's
    assert adv[0].item() == pytest.approx((1 - 10 / 3) / (std_a + 1e-4), rel=1e-6)
    assert adv[5].item() == pytest.approx((6 - 10 / 3) / (std_a + 1e-4), rel=1e-6)
    assert adv[1].item() == pytest.approx(-1.5 / 1.5001, rel=1e-6) and adv[4].item() == pytest.approx(1.5 / 1.5001)
    assert adv[3].item() == 0.0  # a group of one
    glob = group_advantages(torch.tensor(REWARDS), PROMPTS, global_std=True)
    assert glob[1].item() == pytest.approx(-1.5 / (math.sqrt(35 / 12) + 1e-4), rel=1e-6)
    clipped = group_advantages(torch.tensor(REWARDS), PROMPTS, clip=1.2)
    assert clipped[5].item() == pytest.approx(1.2) and clipped[0].item() == pytest.approx(adv[0].item())


@pytest.mark.parametrize("global_std", [False, True])
@pytest.mark.parametrize("n_prompts,group", [(1, 1), (1, 5), (4, 3), (7, 24)])
def test_group_advantages_equal_flow_grpo_tracker(global_std, n_prompts, group):
    g = torch.Generator().manual_seed(n_prompts * 100 + group)
    prompts = [f"p{i % n_prompts}" for i in torch.randperm(n_prompts * group, generator=g).tolist()]
    rewards = torch.randn(n_prompts * group, generator=g, dtype=torch.float64) * 3 + 20
    ours = group_advantages(rewards, prompts, global_std=global_std)
    ref = tracker_reference(prompts, rewards.numpy(), global_std)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_all_equal_rewards_give_exactly_zero_advantages_and_count_in_the_share():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.7, 0.2, 0.5, 0.5], dtype=torch.float64)
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    # the mean of three 0.1 is not 0.1 in floating point: upstream's arithmetic leaves ~1e-13 here, we give 0
    assert np.mean([0.1, 0.1, 0.1]) != 0.1
    adv = group_advantages(rewards, groups)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0] and adv[6:].tolist() == [0.0, 0.0]
    assert adv[3:6].abs().min() > 0.1
    assert all_equal_share(rewards, groups) == pytest.approx(2 / 3)
    assert all_equal_share(torch.tensor([1.0, 2.0]), ["x", "x"]) == 0.0


def test_group_advantages_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one value per item"):
        group_advantages(torch.tensor([1.0, 2.0]), ["a"])


def test_combine_rewards_one_reward_is_weighted_raw_as_upstream():
    r = torch.tensor([22.1, 21.7, 22.9])
    assert torch.equal(combine_rewards({"pickscore": r}, {"pickscore": 1.0}), r.double())
    assert torch.equal(combine_rewards({"pickscore": r}, {"pickscore": -1.0}), -r.double())  # a negated reward


def test_combine_rewards_normalises_each_reward_before_the_weighted_sum():
    big = torch.tensor([20.0, 22.0, 24.0])  # spread 100x the small one's
    small = torch.tensor([0.03, 0.02, 0.01])  # ranks the images the other way
    out = combine_rewards({"big": big, "small": small}, {"big": 1.0, "small": 0.5})
    z = math.sqrt(2 / 3)  # population std of (-1, 0, 1)
    zb = [-1 / (2 * z + 1e-4) * 2, 0.0, 2 / (2 * z + 1e-4)]  # (x - 22) / (std + 1e-4), std = 2 * z
    zs = [0.01 / (0.01 * z + 1e-4), 0.0, -0.01 / (0.01 * z + 1e-4)]
    expected = [b + 0.5 * s for b, s in zip(zb, zs)]
    assert out.tolist() == pytest.approx(expected, rel=1e-9)
    # weight 2 on the small reward: normalised, it outweighs the big one and reverses the order; summed raw
    # (Flow-GRPO / TRL), its 100x smaller spread leaves the big reward's order untouched
    heavy = combine_rewards({"big": big, "small": small}, {"big": 1.0, "small": 2.0})
    assert heavy.argsort().tolist() == [2, 1, 0] and (big + 2 * small).argsort().tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="same rewards"):
        combine_rewards({"big": big}, {"bigg": 1.0})
