"""Preference losses (DPO and its variants, the Bradley–Terry reward-model loss) and the RL math (PPO, GRPO).

Used by `tulu_kit.dpo` (notebook `notebooks/04_dpo.ipynb`), `tulu_kit.reward`
(`notebooks/05_reward_model.ipynb`), `tulu_kit.ppo` (`notebooks/08_ppo.ipynb`) and the GRPO notebook. Every function works on per-example sequence log-probabilities
(shape `(batch,)`), so each one can be checked by hand on fixed numbers (`tests/test_losses.py`).

Loss types follow open-instruct's `DPOLossType` (`open_instruct/dpo_utils.py`), plus IPO:

| loss_type  | paper                                         | TRL 1.16 equivalent                    |
|------------|-----------------------------------------------|----------------------------------------|
| `dpo`      | Rafailov et al. 2023, arXiv 2305.18290, eq. 7 | `DPOConfig(loss_type="sigmoid")`       |
| `dpo_norm` | DPO on length-averaged log-probs (Tulu 3)     | `DPOConfig(loss_type="sigmoid_norm")`  |
| `simpo`    | Meng et al. 2024, arXiv 2405.14734, eq. 6     | experimental `CPOTrainer(loss_type="simpo")` |
| `wpo`      | Zhou et al. 2024, arXiv 2406.11827, eq. 2     | `use_weighting=True` uses the paper's "aligned" weights instead |
| `ipo`      | Azar et al. 2023, arXiv 2310.12036, eq. 17    | `DPOConfig(loss_type="ipo")`           |

Label smoothing is conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"), as in open-instruct:
`-(1-ε)·logσ(β·h) - ε·logσ(-β·h)`. TRL 1.16's `sigmoid` loss ignores `label_smoothing`, so `tulu_kit.dpo`
computes smoothed losses with this module instead of TRL's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("dpo", "dpo_norm", "simpo", "wpo", "ipo")
# Loss types whose log-probs are averaged over response tokens (open-instruct's `is_average_loss`); IPO is
# averaged too, as TRL does after confirming it with the IPO authors (see `ipo_loss`).
AVERAGED = ("dpo_norm", "simpo", "ipo")
NEEDS_REFERENCE = ("dpo", "dpo_norm", "wpo", "ipo")

LossOutput = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]  # (per-example losses, chosen rewards, rejected rewards)


def _smoothed_sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """`-(1-ε)·logσ(β·h) - ε·logσ(-β·h)`: the DPO/SimPO loss, conservative when ε > 0."""
    return (
        -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    )


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO (Rafailov et al. 2023, eq. 7): `-logσ(β[(π_c - π_r) - (ref_c - ref_r)])`.

    The implicit rewards are `β(π_c - ref_c)` and `β(π_r - ref_r)` (section 5 of the paper), detached.
    Pass summed log-probs for `dpo`, length-averaged ones for `dpo_norm` (see `dpo_norm_loss`).
    """
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = _smoothed_sigmoid(logits, beta, label_smoothing)
    chosen_rewards = (beta * (policy_chosen - ref_chosen)).detach()
    rejected_rewards = (beta * (policy_rejected - ref_rejected)).detach()
    return losses, chosen_rewards, rejected_rewards


def dpo_norm_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Length-normalised DPO, the Tulu 3 default (open-instruct `dpo_norm`, beta 5).

    Summed log-probs are divided by the number of response tokens, so long responses do not dominate the margin
    (the length normalisation of SimPO, arXiv 2405.14734, applied to DPO's log-ratios).
    """
    return dpo_loss(
        policy_chosen / chosen_lengths,
        policy_rejected / rejected_lengths,
        ref_chosen / chosen_lengths,
        ref_rejected / rejected_lengths,
        beta,
        label_smoothing,
    )


def simpo_loss(
    policy_chosen_mean: torch.Tensor,
    policy_rejected_mean: torch.Tensor,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """SimPO (Meng et al. 2024, eq. 6): `-logσ(β/|y_c|·log π(y_c) - β/|y_r|·log π(y_r) - γ)`, no reference.

    Written as `-logσ(β(mean_c - mean_r - γ/β))` with `gamma_beta_ratio = γ/β` (0.3 in open-instruct and the
    SimPO repo). Rewards are `β·mean log π`, detached.
    """
    logits = policy_chosen_mean - policy_rejected_mean - gamma_beta_ratio
    losses = _smoothed_sigmoid(logits, beta, label_smoothing)
    return losses, (beta * policy_chosen_mean).detach(), (beta * policy_rejected_mean).detach()


def wpo_weights(policy_chosen_mean: torch.Tensor, policy_rejected_mean: torch.Tensor) -> torch.Tensor:
    """WPO pair weight (Zhou et al. 2024, eq. 2): `min(1, exp(mean_c + mean_r))`, from per-token mean log-probs.

    The product of the two responses' per-token geometric-mean probabilities under the current policy, so
    off-policy pairs (unlikely under the policy) count less. Detached: it weights the loss, it is not trained.

    A deliberate deviation from open-instruct's code: its comment ("compute average logps") and the paper intend
    per-token means, but `dpo_utils.wpo_loss` as written takes the already *summed* sequence log-probs, multiplies
    them by the token mask and divides by its length, which is not a per-token mean of anything (for a real
    response it stays near the summed log-prob, so the weight is ~0). The kit computes the intended weight.
    """
    return torch.clamp(torch.exp(policy_chosen_mean + policy_rejected_mean), max=1.0).detach()


def wpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """WPO: the DPO loss on summed log-probs times `wpo_weights` of the length-averaged policy log-probs."""
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing
    )
    weights = wpo_weights(policy_chosen / chosen_lengths, policy_rejected / rejected_lengths)
    return losses * weights, chosen_rewards, rejected_rewards


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17): `(h - 1/(2τ))²` with `h` the DPO log-ratio difference and `τ = beta`.

    `preference_loss` passes length-averaged log-probs, like TRL ("confirmed with the IPO authors",
    `trl/trainer/dpo_trainer.py`), so that beta means the same thing at any response length.
    """
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = (logits - 1 / (2 * beta)) ** 2
    chosen_rewards = (beta * (policy_chosen - ref_chosen)).detach()
    rejected_rewards = (beta * (policy_rejected - ref_rejected)).detach()
    return losses, chosen_rewards, rejected_rewards


def bradley_terry_loss(
    rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley–Terry reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022, arXiv 2203.02155, eq. 1).

    `-logσ(r_c - r_r - m)` per pair, with an optional margin `m` (Llama 2, arXiv 2307.09288, eq. 2).
    """
    diff = rewards_chosen - rewards_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def preference_loss(
    loss_type: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    gamma_beta_ratio: float = 0.3,
) -> LossOutput:
    """Dispatch on `loss_type` with summed log-probs and response lengths, as the DPO trainer has them."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if loss_type in NEEDS_REFERENCE and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"loss_type {loss_type!r} needs reference log-probs")
    chosen_lengths = chosen_lengths.clamp(min=1).to(policy_chosen.dtype)
    rejected_lengths = rejected_lengths.clamp(min=1).to(policy_rejected.dtype)
    if loss_type == "dpo":
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)
    if loss_type == "dpo_norm":
        return dpo_norm_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, beta,
            label_smoothing,
        )  # fmt: skip
    if loss_type == "simpo":
        return simpo_loss(
            policy_chosen / chosen_lengths,
            policy_rejected / rejected_lengths,
            beta,
            gamma_beta_ratio,
            label_smoothing,
        )
    if loss_type == "wpo":
        return wpo_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, beta,
            label_smoothing,
        )  # fmt: skip
    return ipo_loss(
        policy_chosen / chosen_lengths,
        policy_rejected / rejected_lengths,
        ref_chosen / chosen_lengths,
        ref_rejected / rejected_lengths,
        beta,
    )


# --------------------------------------------------------------------------- RL: PPO and GRPO
# Per-token tensors have shape (batch, response_length). A response's tokens (up to and including its EOS; see
# `response_lengths`) form its mask; the value mask adds the column after them, where open-instruct puts the score
# (`score_index`). Names and formulas follow open-instruct's `ppo_vllm_thread_ray_gtrl.py` (commit 9502f163,
# lines 470-503 and 1203-1390), where Tulu 3's PPO ran; `tests/test_rl_math.py` runs its lines, vendored verbatim,
# beside these functions on the same tensors.

KL_ESTIMATORS = ("kl1", "kl2", "kl3")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`(x - mean) / sqrt(var + 1e-8)` over the masked positions, variance with Bessel's correction, as
    open-instruct's `masked_whiten` (L470-503); `shift_mean=False` adds the mean back. Padding comes out 0."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "kl1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) on tokens sampled from π (Schulman 2020, "Approximating KL
    Divergence", http://joschu.net/blog/kl-approx.html), with `d = log π - log π_ref`:

    * `kl1` (k1) = d: unbiased, high variance, can be negative on one token (open-instruct's default);
    * `kl2` (k2) = d²/2: biased, low variance, never negative;
    * `kl3` (k3) = (e^{-d} - 1) + d: unbiased and never negative (Tulu 3.1 GRPO).
    """
    d = logprobs - ref_logprobs
    if estimator == "kl1":
        return d
    if estimator == "kl2":
        return d**2 / 2
    if estimator == "kl3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


SCORE_PLACEMENTS = ("after_eos", "eos")


def response_lengths(response: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each sampled response ends, as open-instruct decides it (OI L1203-1208, L1273; `truncate_response` and
    `first_true_indices` of `open_instruct/model_utils.py` at 9502f163): everything after the first EOS becomes
    padding, then the response is the tokens before the first pad. So the EOS is kept, and a pad token the policy
    sampled *before* its EOS ends the response there (the pad and what follows are not part of it).

    When the tokenizer's pad is its EOS, the first EOS ends the response and is kept (open-instruct never ran so:
    Tulu's tokenizer has its own pad). Returns (lengths: response tokens per row, has_eos: an EOS was sampled at
    all in a non-empty response, open-instruct's `contain_stop_token`, which drives the non-stop penalty)."""
    width = response.shape[1]
    cols = torch.arange(width, device=response.device)
    is_eos = response == eos_id
    first_eos = torch.where(
        is_eos.any(1), is_eos.long().argmax(1), torch.full_like(is_eos[:, 0], width, dtype=torch.long)
    )
    end = (first_eos + 1).clamp(max=width)  # the EOS is kept
    if pad_id != eos_id:
        is_pad = (response == pad_id) & (cols[None] < first_eos[:, None])
        first_pad = torch.where(is_pad.any(1), is_pad.long().argmax(1), torch.full_like(end, width))
        end = torch.minimum(end, first_pad)
    return end, is_eos.any(1) & (end > 0)  # OI L1276: an empty response does not count as stopped


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """A float mask of shape (batch, width): 1 on the first `lengths[i]` columns of row i."""
    return (torch.arange(width, device=lengths.device)[None] < lengths[:, None]).float()


def score_index(lengths: torch.Tensor, width: int, placement: str = "after_eos") -> torch.Tensor:
    """The column that receives each sequence's score.

    * `after_eos` (the default; open-instruct OI L1287-1307 and TRL's `PPOTrainer` up to 1.12): one column after the
      last response token (`sequence_lengths + 1`), or the last token when the response fills every column. The
      value model is trained on that column too (its mask is the response plus one column, `value_mask`), so
      `V_{T+1}`, the value of the finished response, learns the score, and the score reaches the last action through
      GAE as `γλ(score - V_{T+1})`.
    * `eos`: on the last response token itself (its EOS when there is one), the value trained on response tokens
      only. The kit's earlier choice, kept as an option for its reason: the score lands undamped on the action
      that earned it, and no value is fit at a state where the policy takes no action.
    """
    if placement not in SCORE_PLACEMENTS:
        raise ValueError(f"unknown score placement {placement!r}; expected one of {SCORE_PLACEMENTS}")
    last = (lengths - 1).clamp(min=0)
    if placement == "eos":
        return last
    return torch.where(lengths < width, lengths, last)


def value_mask(lengths: torch.Tensor, width: int, placement: str = "after_eos") -> torch.Tensor:
    """The columns the value model is trained on and GAE runs over: the response, plus (after_eos) the score's
    column (open-instruct's `~padding_mask_p1`)."""
    mask = length_mask(lengths, width)
    if placement == "eos":
        return mask
    return torch.maximum(mask, length_mask(score_index(lengths, width, placement) + 1, width))


def ppo_rewards(
    scores: torch.Tensor, kl: torch.Tensor, lengths: torch.Tensor, beta: float, placement: str = "after_eos"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: `-β·kl_t` on every response token, plus the sequence's score at `score_index` (OI
    L1291-1307). Returns (rewards, 0 outside `value_mask`; non-score reward per sequence)."""
    width = kl.shape[1]
    rewards = -beta * kl * length_mask(lengths, width).to(kl.dtype)
    non_score = rewards.sum(1)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0]), score_index(lengths, width, placement)] += scores
    return rewards * value_mask(lengths, width, placement).to(kl.dtype), non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv 1506.02438, eq. 16), open-instruct L1314-1323:

    `δ_t = r_t + γ V_{t+1} - V_t`, `A_t = δ_t + γλ A_{t+1}`, with V and A zero after the last token.
    Returns (advantages, returns = advantages + values), both 0 on padding.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv 1707.06347, eq. 7), open-instruct L1372-1382:

    `mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε, 1+ε))` with `ρ_t = π(a_t|s_t) / π_old(a_t|s_t)`.
    Returns (loss, {"clipfrac": share of tokens where the clipped term is larger, "approxkl": ½ mean (log ρ)²}).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> tuple[torch.Tensor, dict]:
    """Clipped value loss, open-instruct L1356-1363: `½ mean_t max((V - R)², (clip(V, V_old ± ε_v) - R)²)`.

    Returns (loss, {"clipfrac": share of tokens where the clipped error is larger}).
    """
    clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((err_clipped > err).to(values.dtype), mask)}
    return loss, stats


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's advantage (Shao et al. 2024, arXiv 2402.03300, section 4.1.2): each completion's reward minus the mean
    of its group (the `group_size` completions of one prompt, consecutive in `rewards`), divided by the group's
    standard deviation (unbiased) + `eps` when `scale`, as TRL's `GRPOTrainer` (`scale_rewards="group"`) does;
    `scale=False` is Dr. GRPO's unscaled advantage (Liu et al. 2025, arXiv 2503.20783)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(rewards.shape)
