"""Preference pairs for the DPO and reward-model stages: read, check, hold out.

A pair is ``{"chosen": [messages], "rejected": [messages]}`` with the same prompt (``tulu_kit.data.validate``).
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from tulu_kit.data.validate import BadRowError, validate_preference
from tulu_kit.io import read_rows

logger = logging.getLogger(__name__)


def _problem_kind(err: BadRowError) -> str:
    if "identical" in err.problem:
        return "identical"
    if "same prompt" in err.problem:
        return "different_prompts"
    if "empty" in err.problem:
        return "empty_response"
    return "malformed"


def load_pairs(
    path: str, split: str = "train", bad_pairs: str = "error"
) -> tuple[list[dict], dict[str, int]]:
    """Read preference pairs and check each one; a bad pair raises (naming file, row, field) or is dropped.

    Bad pairs: a malformed conversation, different prompts in chosen and rejected, an empty response, or a
    chosen response identical to the rejected one (no preference signal: DPO's gradient is zero on it).
    """
    pairs, dropped = [], Counter()
    for i, row in enumerate(read_rows(path, split), 1):
        try:
            pair = validate_preference(row, source=path, index=i)
            if pair["chosen"][-1]["content"].strip() == pair["rejected"][-1]["content"].strip():
                raise BadRowError(path, i, "rejected", "chosen and rejected responses are identical")
        except BadRowError as err:
            if bad_pairs == "error":
                raise
            dropped[_problem_kind(err)] += 1
            continue
        pairs.append(pair)
    if dropped:
        logger.warning("%s: dropped %d bad pairs: %s", path, sum(dropped.values()), dict(dropped))
    if not pairs:
        raise ValueError(f"{path}: no usable preference pairs")
    return pairs, dict(dropped)


def split_pairs(cfg) -> tuple[list[dict], list[dict], dict]:
    """Training and held-out pairs of a preference stage's config, with the counts of dropped pairs per file.

    Without ``cfg.eval_file`` a seeded ``cfg.eval_fraction`` of ``cfg.train_file`` is held out.
    """
    train, dropped = load_pairs(cfg.train_file, cfg.train_split, cfg.bad_pairs)
    counts = {"train_file": dropped}
    if cfg.eval_file:
        heldout, counts["eval_file"] = load_pairs(cfg.eval_file, "test", cfg.bad_pairs)
    else:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = int(round(len(train) * cfg.eval_fraction))
        heldout = [train[i] for i in order[:n_eval]]
        train = [train[i] for i in sorted(order[n_eval:])]
    if cfg.max_train_samples:
        train = train[: cfg.max_train_samples]
    return train, heldout, counts
