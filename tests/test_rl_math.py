"""The RL math of tulu_kit.losses (GAE, whitening, KL estimators, clipped PPO losses, group advantages) against
hand computations on fixed tensors."""

import math

import pytest
import torch

from tulu_kit import losses


def test_gae_matches_hand_computation_on_one_trajectory():
    # three response tokens then padding; gamma 0.9, lambda 0.8 so a wrong discount would show
    rewards = torch.tensor([[0.5, -1.0, 2.0, 7.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = losses.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 2.0 + 0.9 * 0.0 - 3.0  # the value after the last token is 0, padding rewards are ignored
    d1 = -1.0 + 0.9 * 3.0 - 2.0
    d0 = 0.5 + 0.9 * 2.0 - 1.0
    a2 = d2
    a1 = d1 + 0.9 * 0.8 * a2
    a0 = d0 + 0.9 * 0.8 * a1
    assert adv.tolist()[0] == pytest.approx([a0, a1, a2, 0.0])
    assert ret.tolist()[0] == pytest.approx([a0 + 1.0, a1 + 2.0, a2 + 3.0, 0.0])


def test_gae_with_gamma_one_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, _ = losses.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.flatten().tolist() == pytest.approx([5.5, 4.5, 2.5, 3.0, 0.0, 0.0])


def test_masked_whiten_uses_masked_positions_and_bessel():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = losses.masked_whiten(x, mask)
    std = math.sqrt(((1 - 2.5) ** 2 + (2 - 2.5) ** 2 + (3 - 2.5) ** 2 + (4 - 2.5) ** 2) / 3)  # n - 1 = 3
    assert out.flatten().tolist() == pytest.approx(
        [-1.5 / std, -0.5 / std, 0.0, 0.5 / std, 1.5 / std, 0.0], rel=1e-6
    )
    kept = losses.masked_whiten(x, mask, shift_mean=False)
    assert kept[0, 0].item() == pytest.approx(-1.5 / std + 2.5, rel=1e-6)


def test_kl_estimators_are_schulmans_k1_k2_k3():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])  # d = 0.5, -1.0
    assert losses.kl_penalty(logp, ref, "kl1").tolist() == pytest.approx([0.5, -1.0])
    assert losses.kl_penalty(logp, ref, "kl2").tolist() == pytest.approx([0.125, 0.5])
    assert losses.kl_penalty(logp, ref, "kl3").tolist() == pytest.approx(
        [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    )
    with pytest.raises(ValueError, match="kl4"):
        losses.kl_penalty(logp, ref, "kl4")


def test_kl3_is_unbiased_for_the_true_kl():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    true_kl = (p * (p / q).log()).sum().item()
    d = p.log() - q.log()
    for est in ("kl1", "kl3"):  # expectations under p equal the true KL; k2 is biased
        assert (p * losses.kl_penalty(p.log(), q.log(), est)).sum().item() == pytest.approx(true_kl, rel=1e-5)
    assert (p * d**2 / 2).sum().item() != pytest.approx(true_kl, rel=1e-2)


def test_ppo_rewards_put_the_score_on_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards, non_score = losses.ppo_rewards(torch.tensor([10.0, -10.0]), kl, mask, beta=0.5)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 10.0 - 0.1, 0.0, -0.2, -0.25, -10.0 - 0.3])
    assert non_score.tolist() == pytest.approx([-0.15, -0.75])


def test_clipped_policy_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    loss, stats = losses.ppo_policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3, rel=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    # padding is ignored
    loss_masked, _ = losses.ppo_policy_loss(new, old, adv, torch.tensor([[1.0, 1.0, 0.0]]), cliprange=0.2)
    assert loss_masked.item() == pytest.approx((-1.2 - 0.5) / 2, rel=1e-6)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 5.0]])
    old = torch.tensor([[0.5, 0.5, 0.5]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    loss, stats = losses.ppo_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # clipped values: 0.7, 0.3, 0.7; errors: (1, 1.69), (0, 0.09), (25, 0.49) -> max 1.69, 0.09, 25
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09 + 25.0) / 3, rel=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
    adv = losses.group_advantages(rewards, group_size=3)
    std1 = math.sqrt(((1 - 1 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    std2 = math.sqrt((4 + 0 + 4) / 2)
    assert adv.tolist() == pytest.approx(
        [(2 / 3) / (std1 + 1e-4), (-1 / 3) / (std1 + 1e-4), (-1 / 3) / (std1 + 1e-4),
         -2 / (std2 + 1e-4), 0.0, 2 / (std2 + 1e-4)], rel=1e-6)  # fmt: skip
    assert losses.group_advantages(rewards, 3, scale=False).tolist() == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 2.0]
    )
    assert losses.group_advantages(torch.ones(4), 2).tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="groups of 4"):
        losses.group_advantages(rewards, 4)
