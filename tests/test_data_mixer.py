"""The mixer reproduces open-instruct's dataset_mixer_list counts exactly, under a seed."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tulu_kit.data.mixer import mix, parse_amount, parse_mixer_list, sample_rows, target_count


def rows(prefix: str, n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{prefix}{i}"}, {"role": "assistant", "content": "ok"}]}
            for i in range(n)]  # fmt: skip


def test_amount_parsing_follows_the_dot_rule():
    assert parse_amount("0.5") == 0.5 and isinstance(parse_amount("1.0"), float)
    assert parse_amount("100") == 100 and isinstance(parse_amount(100), int)
    assert parse_amount(3.0) == 3.0
    for bad in ("half", -1, True, float("nan")):
        with pytest.raises(ValueError):
            parse_amount(bad)
    assert parse_mixer_list(["a", 0.5, "b", "1000"]) == [("a", 0.5), ("b", 1000)]
    with pytest.raises(ValueError, match="odd number"):
        parse_mixer_list(["a", 0.5, "b"])


@pytest.mark.parametrize(
    ("n", "amount", "expected"),
    [(100, 0.5, 50), (100, 1.0, 100), (100, 3.0, 300), (10, 2.5, 25), (7, 0.3, 2), (100, 0.29, 29), (5, 12, 12),
     (100, 40, 40), (3, 0, 0)],
)  # fmt: skip
def test_exact_counts(n, amount, expected):
    assert target_count(n, amount) == expected
    out = mix([("s", amount, rows("s", n))], seed=1)
    assert len(out.train) == expected and out.counts[0].n_taken == expected


def test_upsampling_is_whole_repeats_plus_a_distinct_remainder():
    data = rows("x", 10)
    picked = sample_rows(data, 2.5, random.Random(0))
    counts = Counter(r["messages"][0]["content"] for r in picked)
    assert len(picked) == 25
    assert sorted(counts.values()) == [2] * 5 + [3] * 5  # every row twice, five of them a third time
    picked = sample_rows(data, 0.4, random.Random(0))
    assert len({r["messages"][0]["content"] for r in picked}) == 4  # subsets never repeat a row


def test_mixture_is_reproducible_and_seed_dependent():
    pools = [("a", 0.5, rows("a", 40)), ("b", 25, rows("b", 10)), ("c", 2.0, rows("c", 7))]
    first, again, other = (mix(pools, seed=s) for s in (3, 3, 4))
    assert first.train == again.train
    assert first.train != other.train
    assert [c.n_taken for c in first.counts] == [20, 25, 14]
    assert Counter(r["source"] for r in first.train) == {"a": 20, "b": 25, "c": 14}
    assert [c.n_taken for c in other.counts] == [20, 25, 14]  # the counts never depend on the seed


def test_dedupe_runs_before_sampling_and_across_sources():
    a = rows("a", 10) + rows("a", 4)  # 4 exact duplicates
    b = rows("a", 2) + rows("b", 5)  # 2 duplicates of source a
    out = mix([("a", 2.0, a), ("b", 1.0, b)], seed=0, dedupe=True)
    assert [c.n_duplicates for c in out.counts] == [4, 2]
    assert [c.n_taken for c in out.counts] == [20, 5]  # the upsample of the 10 unique rows survives


def test_eval_split_is_disjoint_from_training():
    out = mix([("a", 1.0, rows("a", 40)), ("b", 3.0, rows("b", 10))], seed=0, eval_fraction=0.1)
    assert [c.n_eval for c in out.counts] == [4, 1]
    assert [c.n_taken for c in out.counts] == [36, 27]  # amounts apply to what is left after the hold-out
    held = {r["messages"][0]["content"] for r in out.eval}
    assert not held & {r["messages"][0]["content"] for r in out.train}
