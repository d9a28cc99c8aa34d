"""The data mixer, with open-instruct's ``dataset_mixer_list`` semantics (notebook 01, the ``data`` stage).

A mixer list alternates sources and amounts: ``[source1, amount1, source2, amount2, ...]``. An amount is

- a fraction when it is a float (or a string with a "."): ``0.5`` takes half the rows, ``3.0`` three times them;
- an absolute count when it is an int (or a string without "."): ``1000`` takes 1000 rows.

Taking more rows than a source has is upsampling: whole repeats plus a seeded random remainder drawn without
replacement; taking fewer is a seeded random subset (open-instruct ``load_dataset_configs``). Counts are exact and
reported per source. Optional deduplication removes repeated conversations (within and across sources) before
sampling, so it never undoes an upsample.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def parse_amount(value: Any, where: str = "amount") -> float | int:
    """``0.5`` / ``"0.5"`` -> fraction 0.5; ``100`` / ``"100"`` -> count 100 (open-instruct's "." rule)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a fraction or a count, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if "." in text or "e" in text.lower() else int(text)
        except ValueError:
            raise ValueError(
                f"{where}: expected a fraction (e.g. 0.5) or a count (e.g. 100), got {text!r}"
            ) from None
    if (
        not isinstance(value, (int, float))
        or value < 0
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise ValueError(f"{where}: expected a non-negative fraction or count, got {value!r}")
    return value


def parse_mixer_list(items: Sequence[Any], where: str = "mixer list") -> list[tuple[str, float | int]]:
    """``[source, amount, source, amount, ...]`` -> ``[(source, amount), ...]``."""
    if len(items) % 2:
        raise ValueError(f"{where}: expected source/amount pairs, got an odd number of items ({len(items)})")
    pairs = []
    for k in range(0, len(items), 2):
        source = items[k]
        if not isinstance(source, str):
            raise ValueError(f"{where}[{k}]: expected a source name, got {source!r}")
        pairs.append((source, parse_amount(items[k + 1], f"{where}[{k + 1}] ({source})")))
    return pairs


def target_count(n_rows: int, amount: float | int) -> int:
    """How many rows an amount asks for: a fraction of ``n_rows`` (rounded down) or the count itself."""
    if isinstance(amount, float):
        return int(math.floor(n_rows * amount + 1e-9))
    return int(amount)


def sample_rows(rows: Sequence, amount: float | int, rng: random.Random) -> list:
    """Exactly ``target_count`` rows: whole repeats of ``rows`` plus a seeded subset without replacement."""
    n = target_count(len(rows), amount)
    if n and not rows:
        raise ValueError(f"cannot take {n} rows from an empty source")
    repeats, remainder = divmod(n, len(rows)) if rows else (0, 0)
    picked = list(rows) * repeats
    picked += [rows[i] for i in sorted(rng.sample(range(len(rows)), remainder))]
    return picked


def conversation_key(example: dict) -> str:
    """A hash of a conversation's messages (or chosen + rejected), for deduplication."""
    text = json.dumps(
        {k: example[k] for k in ("messages", "chosen", "rejected") if k in example}, sort_keys=True
    )
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class SourceCount:
    """Per source: rows read, converted, dropped as bad, removed as duplicates, held out, taken, and removed from
    the taken rows by decontamination (``n_taken`` is what the written mix holds)."""

    source: str
    amount: float | int
    n_read: int = 0
    n_bad: int = 0
    n_duplicates: int = 0
    n_eval: int = 0
    n_taken: int = 0
    n_contaminated: int = 0
    bad_rows: list[str] = field(default_factory=list)  # the first few error messages


@dataclass
class Mixture:
    train: list[dict]
    eval: list[dict]
    counts: list[SourceCount]


def mix(
    pools: Sequence[tuple[str, float | int, list[dict]]],
    *,
    seed: int = 42,
    dedupe: bool = False,
    eval_fraction: float = 0.0,
    counts: Sequence[SourceCount] | None = None,
) -> Mixture:
    """Mix converted sources ``(source, amount, examples)``; each output row gets a ``source`` key.

    Per source, in order: drop duplicates (``dedupe``), hold out ``eval_fraction`` of the unique rows (at least
    one when the fraction is positive and the source has two or more rows), then sample ``amount`` of the rest.
    The training mix is shuffled with ``seed``.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    counts = list(counts) if counts is not None else [SourceCount(s, a, n_read=len(r)) for s, a, r in pools]
    seen: set[str] = set()
    train, held = [], []
    for (source, amount, examples), count in zip(pools, counts):
        rng = random.Random(f"{seed}-{source}")
        unique = examples
        if dedupe:
            unique = []
            for ex in examples:
                key = conversation_key(ex)
                if key not in seen:
                    seen.add(key)
                    unique.append(ex)
            count.n_duplicates = len(examples) - len(unique)
        n_eval = 0
        if eval_fraction > 0 and len(unique) >= 2:
            n_eval = max(1, int(len(unique) * eval_fraction))
        order = list(range(len(unique)))
        rng.shuffle(order)
        eval_idx = set(order[:n_eval])
        pool = [ex for i, ex in enumerate(unique) if i not in eval_idx]
        held += [{**unique[i], "source": source} for i in sorted(eval_idx)]
        taken = sample_rows(pool, amount, rng)
        train += [{**ex, "source": source} for ex in taken]
        count.n_eval, count.n_taken = n_eval, len(taken)
    random.Random(seed).shuffle(train)
    return Mixture(train, held, counts)
