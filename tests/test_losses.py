"""Each preference loss equals its paper's formula by hand, and TRL's where TRL has it."""

import math
import types

import pytest
import torch

from tulu_kit import losses, trainers

BETA = 0.5
# Fixed per-token log-probs of the response tokens for 3 pairs (chosen, rejected); lengths differ on purpose.
CHOSEN_TOKENS = [[-0.5, -1.0, -0.25], [-2.0, -0.1], [-0.3, -0.3, -0.3, -0.3]]
REJECTED_TOKENS = [[-1.5, -0.5], [-0.2, -0.4, -0.6, -0.8], [-3.0]]
REF_CHOSEN = torch.tensor([-2.0, -1.5, -1.4])  # summed reference log-probs
REF_REJECTED = torch.tensor([-1.8, -2.5, -2.0])


def _sums(rows):
    return torch.tensor([sum(r) for r in rows])


def _lens(rows):
    return torch.tensor([float(len(r)) for r in rows])


PC, PR, LC, LR = _sums(CHOSEN_TOKENS), _sums(REJECTED_TOKENS), _lens(CHOSEN_TOKENS), _lens(REJECTED_TOKENS)


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_dpo_matches_formula_by_hand():
    out, rc, rr = losses.preference_loss("dpo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA)
    for i in range(3):
        h = (PC[i] - PR[i]).item() - (REF_CHOSEN[i] - REF_REJECTED[i]).item()
        assert out[i].item() == pytest.approx(-_logsig(BETA * h), rel=1e-6)
        assert rc[i].item() == pytest.approx(BETA * (PC[i] - REF_CHOSEN[i]).item(), rel=1e-6)
        assert rr[i].item() == pytest.approx(BETA * (PR[i] - REF_REJECTED[i]).item(), rel=1e-6)
    # first pair by hand: h = (-1.75 - -2.0) - (-2.0 - -1.8) = 0.45
    assert out[0].item() == pytest.approx(math.log1p(math.exp(-0.225)), rel=1e-6)


def test_label_smoothing_is_conservative_dpo():
    eps = 0.1
    out, _, _ = losses.preference_loss(
        "dpo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA, label_smoothing=eps
    )
    h = (PC - PR) - (REF_CHOSEN - REF_REJECTED)
    for i in range(3):
        x = BETA * h[i].item()
        assert out[i].item() == pytest.approx(-(1 - eps) * _logsig(x) - eps * _logsig(-x), rel=1e-6)
    plain, _, _ = losses.preference_loss("dpo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA)
    assert not torch.allclose(out, plain)


def test_dpo_norm_uses_mean_log_probs():
    out, rc, _ = losses.preference_loss("dpo_norm", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, beta=5.0)
    for i in range(3):
        h = (PC[i] / LC[i] - PR[i] / LR[i] - REF_CHOSEN[i] / LC[i] + REF_REJECTED[i] / LR[i]).item()
        assert out[i].item() == pytest.approx(-_logsig(5.0 * h), rel=1e-6)
        assert rc[i].item() == pytest.approx(5.0 * (PC[i] - REF_CHOSEN[i]).item() / LC[i].item(), rel=1e-6)


def test_simpo_needs_no_reference_and_matches_formula():
    gbr = 0.3
    out, rc, rr = losses.preference_loss("simpo", PC, PR, None, None, LC, LR, beta=2.0, gamma_beta_ratio=gbr)
    gamma = gbr * 2.0
    for i in range(3):
        # eq. 6: -log σ(β/|y_w| log π(y_w) - β/|y_l| log π(y_l) - γ)
        x = 2.0 * PC[i].item() / LC[i].item() - 2.0 * PR[i].item() / LR[i].item() - gamma
        assert out[i].item() == pytest.approx(-_logsig(x), rel=1e-6)
        assert rc[i].item() == pytest.approx(2.0 * PC[i].item() / LC[i].item(), rel=1e-6)


def test_wpo_weights_the_dpo_loss():
    out, _, _ = losses.preference_loss("wpo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA)
    dpo, _, _ = losses.preference_loss("dpo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA)
    for i in range(3):
        w = min(1.0, math.exp(PC[i].item() / LC[i].item() + PR[i].item() / LR[i].item()))
        assert out[i].item() == pytest.approx(dpo[i].item() * w, rel=1e-6)
        assert w < 1.0  # the weight really changes the loss here
    # the weight is not trained through
    pc = PC.clone().requires_grad_(True)
    w = losses.wpo_weights(pc / LC, PR / LR)
    assert not w.requires_grad


def test_ipo_matches_eq17_on_mean_log_probs():
    out, _, _ = losses.preference_loss("ipo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, beta=0.1)
    for i in range(3):
        h = (PC[i] / LC[i] - PR[i] / LR[i] - REF_CHOSEN[i] / LC[i] + REF_REJECTED[i] / LR[i]).item()
        assert out[i].item() == pytest.approx((h - 1 / (2 * 0.1)) ** 2, rel=1e-6)


def test_bradley_terry_by_hand_and_against_trl_reward_trainer_formula():
    rc, rr = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    out = losses.bradley_terry_loss(rc, rr)
    assert out.tolist() == pytest.approx([-_logsig(1.0), -_logsig(-1.0), -_logsig(-0.5)], rel=1e-6)
    m = torch.tensor([0.5, 0.0, 1.0])
    assert losses.bradley_terry_loss(rc, rr, m)[0].item() == pytest.approx(-_logsig(0.5), rel=1e-6)
    # TRL 1.16 RewardTrainer.compute_loss on the same rewards (stub model returning them as logits)
    for margin in (None, m):
        theirs = trainers.trl_reward_loss(rc, rr, margin)
        assert losses.bradley_terry_loss(rc, rr, margin).mean().item() == pytest.approx(theirs, rel=1e-6)


def test_unknown_loss_and_missing_reference_are_clear_errors():
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        losses.preference_loss("kto", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA)
    with pytest.raises(ValueError, match="needs reference"):
        losses.preference_loss("dpo", PC, PR, None, None, LC, LR, BETA)


# --- the same numbers through TRL's own code -------------------------------------------------------------------


def _trl_dpo_loss(loss_type: str, beta: float, use_weighting: bool = False) -> float:
    return trainers.trl_dpo_loss(
        CHOSEN_TOKENS, REJECTED_TOKENS, REF_CHOSEN, REF_REJECTED, loss_type, beta, use_weighting
    )


@pytest.mark.parametrize(("ours", "theirs", "beta"), [("dpo", "sigmoid", 0.5), ("dpo_norm", "sigmoid_norm", 5.0),
                                                       ("ipo", "ipo", 0.1)])  # fmt: skip
def test_equals_trl_dpo_trainer(ours, theirs, beta):
    out, _, _ = losses.preference_loss(ours, PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, beta)
    assert out.mean().item() == pytest.approx(_trl_dpo_loss(theirs, beta), rel=1e-5)


def test_wpo_equals_trl_use_weighting_without_its_alignment_term():
    # TRL's `use_weighting` divides each token prob by sqrt(Σ_v p(v)²) (WPO's "aligned" variant); with that term at
    # zero it is open-instruct's weight exp(mean_c + mean_r).
    out, _, _ = losses.preference_loss("wpo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA)
    assert out.mean().item() == pytest.approx(_trl_dpo_loss("sigmoid", BETA, use_weighting=True), rel=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_and_smoothing_equal_trl_cpo_trainer(label_smoothing):
    from trl.experimental.cpo import CPOTrainer

    def cpo(loss_type, chosen, rejected, beta, gamma=0.0):
        stub = types.SimpleNamespace(
            alpha=0.0, loss_type=loss_type, beta=beta, simpo_gamma=gamma, label_smoothing=label_smoothing,
            accelerator=types.SimpleNamespace(device="cpu"),
        )  # fmt: skip
        return CPOTrainer.cpo_loss(stub, chosen, rejected)

    ours, rc, _ = losses.preference_loss(
        "simpo", PC, PR, None, None, LC, LR, beta=2.0, gamma_beta_ratio=0.3, label_smoothing=label_smoothing
    )
    theirs, trc, _ = cpo("simpo", PC / LC, PR / LR, beta=2.0, gamma=0.6)
    assert torch.allclose(ours, theirs, rtol=1e-6)
    assert torch.allclose(rc, trc, rtol=1e-6)
    # CPO's sigmoid on log-ratios is the conservative DPO loss
    ours, _, _ = losses.preference_loss(
        "dpo", PC, PR, REF_CHOSEN, REF_REJECTED, LC, LR, BETA, label_smoothing=label_smoothing
    )
    theirs, _, _ = cpo("sigmoid", PC - REF_CHOSEN, PR - REF_REJECTED, beta=BETA)
    assert torch.allclose(ours, theirs, rtol=1e-6)
