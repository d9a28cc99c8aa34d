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


def test_ppo_rewards_put_the_score_after_the_response_or_on_its_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    lengths = torch.tensor([2, 3])
    rewards, non_score = losses.ppo_rewards(torch.tensor([10.0, -10.0]), kl, lengths, beta=0.5)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, -0.1, 10.0, -0.2, -0.25, -10.0 - 0.3])
    assert non_score.tolist() == pytest.approx([-0.15, -0.75])
    rewards, _ = losses.ppo_rewards(torch.tensor([10.0, -10.0]), kl, lengths, beta=0.5, placement="eos")
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 10.0 - 0.1, 0.0, -0.2, -0.25, -10.0 - 0.3])


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


# --------------------------------------------------------------------------- open-instruct's lines, same tensors

EOS, PAD, JUNK = 2, 0, 7
# one response per case, 6 columns: EOS mid-response (junk after it), at column 0, at the last column, absent,
# a pad sampled before the EOS, a pad at column 0
RESPONSES = [
    [5, 6, EOS, JUNK, JUNK, JUNK],
    [EOS, JUNK, JUNK, JUNK, JUNK, JUNK],
    [5, 6, 5, 6, 5, EOS],
    [5, 6, 5, 6, 5, 6],
    [5, PAD, 6, EOS, JUNK, JUNK],
    [PAD, 5, EOS, JUNK, JUNK, JUNK],
]


def _case(kl_estimator="kl1", gamma=1.0, lam=0.95, beta=0.05, seed=0):
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(seed)
    n, width = len(RESPONSES), len(RESPONSES[0])
    args = SimpleNamespace(stop_token_id=EOS, min_response_length=0, non_stop_penalty=True, penalty_reward_value=-10.0,
                           kl_estimator=kl_estimator, beta=beta, whiten_rewards=False, gamma=gamma, lam=lam,
                           cliprange=0.2, cliprange_value=0.2)  # fmt: skip
    t = dict(
        response=torch.tensor(RESPONSES),
        logprobs=-torch.rand(n, width, generator=g) * 3,
        ref_logprobs=-torch.rand(n, width, generator=g) * 3,
        values=torch.randn(n, width, generator=g),
        scores=torch.randn(n, generator=g) * 5,
        new_logprobs=-torch.rand(n, width, generator=g) * 3,
        vpred=torch.randn(n, width, generator=g),
    )
    return args, t


def _theirs(args, t):
    from types import SimpleNamespace

    from tests import oi_ppo_reference as oi

    query = torch.ones(len(RESPONSES), 3, dtype=torch.long)
    post, seq_len = oi.sequence_lengths_of(args, SimpleNamespace(pad_token_id=PAD), query, t["response"])
    rewards, adv, ret, values, pmask, pmask_p1, has_eos = oi.advantages_and_returns(
        args, t["response"], post, seq_len, t["logprobs"], t["ref_logprobs"], t["values"], t["scores"])  # fmt: skip
    full_vpred = torch.cat([torch.zeros(len(RESPONSES), 2), t["vpred"], torch.zeros(len(RESPONSES), 1)], 1)
    logprobs = torch.masked_fill(t["logprobs"], pmask, oi.INVALID_LOGPROB)
    vf_loss, pg_loss = oi.losses(args, (full_vpred[..., None],), t["new_logprobs"], values, ret, logprobs, adv,
                                 pmask_p1, pmask, slice(None), 3)  # fmt: skip
    return dict(lengths=seq_len + 1, has_eos=has_eos, rewards=rewards, advantages=adv, returns=ret,
                vf_loss=vf_loss, pg_loss=pg_loss)  # fmt: skip


def _ours(args, t, placement="after_eos"):
    lengths, has_eos = losses.response_lengths(t["response"], EOS, PAD)
    width = t["response"].shape[1]
    mask, vmask = losses.length_mask(lengths, width), losses.value_mask(lengths, width, placement)
    scores = torch.where(has_eos, t["scores"], torch.full_like(t["scores"], args.penalty_reward_value))
    kl = losses.kl_penalty(t["logprobs"], t["ref_logprobs"], args.kl_estimator) * mask
    rewards, _ = losses.ppo_rewards(scores, kl, lengths, args.beta, placement)
    raw, returns = losses.gae(rewards, t["values"] * vmask, vmask, args.gamma, args.lam)
    advantages = losses.masked_whiten(raw, mask)
    vf_loss, _ = losses.ppo_value_loss(
        t["vpred"] * vmask, t["values"] * vmask, returns, vmask, args.cliprange_value
    )
    pg_loss, _ = losses.ppo_policy_loss(t["new_logprobs"], t["logprobs"], advantages, mask, args.cliprange)
    return dict(lengths=lengths, has_eos=has_eos, rewards=rewards, advantages=advantages, returns=returns,
                vf_loss=vf_loss, pg_loss=pg_loss)  # fmt: skip


def _max_diff(ours, theirs) -> dict:
    return {k: (ours[k].float() - theirs[k].float()).abs().max().item() for k in ours}


@pytest.mark.parametrize("kl_estimator", ["kl1", "kl2", "kl3"])
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_default_placement_equals_open_instructs_lines(kl_estimator, gamma, lam):
    args, t = _case(kl_estimator, gamma, lam, seed=hash((kl_estimator, gamma, lam)) % 1000)
    theirs = _theirs(args, t)
    ours = _ours(args, t)
    assert ours["lengths"].tolist() == [3, 1, 6, 6, 1, 0]  # the pad before the EOS ends the response
    assert ours["has_eos"].tolist() == [True, True, True, False, True, False]
    diffs = _max_diff(ours, theirs)
    assert max(diffs.values()) <= 5e-6, diffs  # fp32 rounding on values of size ~10
    # the score sits one column after the response: column 3 for the first case, 1 for the EOS at column 0
    assert ours["rewards"][0, 3] == pytest.approx(t["scores"][0].item())
    assert (
        ours["rewards"][2, 5] != 0 and ours["rewards"][5, 0] == -10.0
    )  # empty: penalised, score at column 0


def test_eos_placement_differs_from_open_instruct_only_when_a_response_ends_early():
    args, t = _case()
    theirs, ours = _theirs(args, t), _ours(args, t, placement="eos")
    assert ours["rewards"][0, 2] == pytest.approx(
        t["scores"][0].item() - args.beta * (t["logprobs"] - t["ref_logprobs"])[0, 2].item()
    )
    assert ours["rewards"][0, 3] == 0.0  # nothing after the EOS
    assert (ours["advantages"] - theirs["advantages"]).abs().max() > 0.01  # a real difference, by design
    assert (
        ours["returns"] - theirs["returns"]
    ).abs().max() > 1.0  # the value learns the score one column earlier
    # rows whose response fills every column put the score on the last one either way
    full = [2, 3]
    assert torch.allclose(ours["rewards"][full], theirs["rewards"][full], atol=1e-6)


def test_score_index_and_value_mask():
    lengths = torch.tensor([3, 6, 0])
    assert losses.score_index(lengths, 6).tolist() == [3, 5, 0]
    assert losses.score_index(lengths, 6, "eos").tolist() == [2, 5, 0]
    assert losses.value_mask(lengths, 6).tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]]
    assert losses.value_mask(lengths, 6, "eos").tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6, [0] * 6]
    with pytest.raises(ValueError, match="score placement"):
        losses.score_index(lengths, 6, "bos")
