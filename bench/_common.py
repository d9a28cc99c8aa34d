"""What the bench scripts share: interleaved repeats, medians, and the row format `make bench` collects.

Every script run by ``bench/run_all.py`` takes ``--quick`` (the sizes ``make bench`` uses), ``--repeats N`` and
``--json PATH``; with ``--json`` it writes ``{"rows": [row(...), ...]}`` there, besides printing its own tables.
A row compares tulu-kit (``ours``) with a baseline (bare TRL, one-at-a-time generation, a whole-model merge, ...)
on the same work. Timings on a shared machine are noisy, so each repeat runs both sides back to back (in
alternating order) and the reported ratio is the median of the per-repeat ratios, not a ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_args(parser: argparse.ArgumentParser, repeats: int = 3) -> argparse.ArgumentParser:
    parser.add_argument("--repeats", type=int, default=repeats, help="repeats; medians are reported")
    parser.add_argument("--quick", action="store_true", help="the small sizes `make bench` uses")
    parser.add_argument("--json", help="also write the rows as JSON here (bench/run_all.py reads it)")
    return parser


def row(
    group: str,
    metric: str,
    ours: float,
    baseline: float | None = None,
    *,
    unit: str = "s",
    better: str = "lower",
    ratios: list[float] | None = None,
    samples: dict | None = None,
    note: str = "",
) -> dict:
    """One line of the table: ``ratio`` = ours / baseline (median of the paired ratios when ``ratios``)."""
    if ratios:
        ratio = statistics.median(ratios)
    elif baseline:
        ratio = ours / baseline
    else:
        ratio = None
    return {
        "group": group,
        "metric": metric,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "better": better,
        "note": note,
        "samples": samples or {},
    }


def interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each ``fn`` once per repeat, alternating their order; each returns its measurement (e.g. seconds)."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(fns[name]())
    return out


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b) if y]


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_rows(path: str | None, rows: list[dict], **info) -> None:
    if path:
        Path(path).write_text(json.dumps({"rows": rows, **info}, indent=1))


def fair_clock(threads: int = 1) -> tuple[Callable[[], float], str]:
    """The clock for timings: wall time on a GPU; on a CPU this process's CPU time with ``threads`` torch threads.

    A CPU shared with other jobs stretches wall time by however much they take; the CPU time of one thread that
    does the work (no spinning helper threads) changes much less, so ratios from one run stay comparable.
    """
    import torch

    if torch.cuda.is_available():
        return time.perf_counter, "wall time"
    torch.set_num_threads(threads)
    return time.process_time, f"CPU time, {threads} torch thread(s)"
