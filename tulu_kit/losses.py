"""Preference losses: DPO and its variants, and the Bradley–Terry reward-model loss.

Used by `tulu_kit.dpo` (notebook `notebooks/04_dpo.ipynb`) and `tulu_kit.reward`
(`notebooks/05_reward_model.ipynb`). Every function works on per-example sequence log-probabilities
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
