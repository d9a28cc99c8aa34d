"""Checks of the sentences a notebook prints about its own results, shared by the tests that run those notebooks."""

from __future__ import annotations

import math


def check_rl_line(printed: str, stage: str, n_prompts: int) -> None:
    """The RL sanity check's line (:func:`tulu_kit.toy_eval.rl_line`) in a notebook's printed output says what its
    numbers say: rose or fell by more than the two standard errors it prints, else moved less."""
    line = printed.split(f"{stage}: sampled accuracy on its {n_prompts} training prompts")[1].split("\n")[0]
    noise = float(line.split("two standard errors (")[1].split(")")[0])
    start, trained = float(line.split("): ")[1].split()[0]), float(line.split("control), ")[1].split()[0])
    word = (
        "rose by more"
        if trained - start > noise
        else "fell by more"
        if start - trained > noise
        else "moved less"
    )
    assert f" {word} than two standard errors" in line, line


def check_heldout_line(printed: str, stage: str, n: int = 100) -> tuple[float, float]:
    """The held-out line (:func:`tulu_kit.toy_eval.heldout_line`) in a notebook's printed output says what its
    numbers say (the word against the bound it prints; the questions newly right and wrong against the two
    accuracies); returns the start's and the policy's accuracies."""
    line = printed.split(f"{stage}: accuracy on {n} held-out questions")[1].split("\n")[0]
    noise = float(line.split("paired difference (")[1].split(")")[0])
    start, trained = float(line.split("): ")[1].split()[0]), float(line.split("at its start, ")[1].split()[0])
    right, wrong = int(line.split("trained (")[1].split()[0]), int(line.split("right, ")[1].split()[0])
    assert round((trained - start) * n) == right - wrong, line
    gain = (right - wrong) / n
    # the bound recomputed from the counts: 2 sd / sqrt(n) of the per-question differences (+1, -1 or 0)
    assert noise == round(2 * math.sqrt((right + wrong - n * gain**2) / (n - 1) / n), 3), line
    word = "rose by more" if gain > noise else "fell by more" if -gain > noise else "moved less"
    assert f" {word} than two standard errors" in line, line
    return start, trained
