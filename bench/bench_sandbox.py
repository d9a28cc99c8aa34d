"""Code-execution throughput: the out-of-process oracle (`sandbox.run_tests`: the candidate sandboxed, the tests in
the trusted runner, calls over a pipe) vs the same programs run whole in one sandboxed process (`run_program` on
`prompt + completion + test + check(entry_point)`, the in-process harness of openai/human-eval and of this kit
before issue 23) on HumanEval's canonical solutions.

Both sides use the same sandbox (namespaces, rlimits, seccomp, the harness imports) and the same workers; the
difference is what the oracle adds: a second interpreter for the candidate and the round trips of each call.
Rows: seconds per sample (median over repeats, paired ratio) and both sides' pass counts (all must pass).

    python bench/bench_sandbox.py --quick               # 40 tasks (make bench)
    python bench/bench_sandbox.py --tasks 164 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import add_args, interleaved, paired_ratios, row, seconds  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    p = add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument(
        "--tasks", type=int, default=0, help="HumanEval tasks (default: 40 with --quick, else all)"
    )
    p.add_argument("--workers", type=int, default=0, help="samples at once (default: one per CPU core)")
    shared = Path(os.environ.get("TULU_KIT_SHARED_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--data-dir", default=str(shared) if (shared / "humaneval").is_dir() else "demo")
    a = p.parse_args(argv)
    from tulu_kit.evals import humaneval, sandbox

    problems = list(humaneval.load_problems(a.data_dir).values())
    problems = problems[: a.tasks or (40 if a.quick else len(problems))]
    workers = a.workers or os.cpu_count() or 1
    limits = sandbox.Limits(timeout_s=3.0)
    oracle = [humaneval.program(p, p["canonical_solution"]) for p in problems]
    whole = [f"{s.program}\n{s.tests}" for s in oracle]
    passed: dict[str, int] = {}

    def timed(name, jobs):
        def fn():
            results = []
            t = seconds(lambda: results.extend(sandbox.run_many(jobs, limits, workers)))
            passed[name] = sum(r.passed for r in results)
            return t / len(jobs)

        return fn

    times = interleaved(
        {"oracle": timed("oracle", oracle), "in-process": timed("in-process", whole)}, a.repeats
    )
    ratios = paired_ratios(times["oracle"], times["in-process"])
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    note = (
        f"{len(problems)} HumanEval canonical solutions, {workers} workers, isolation {sandbox.isolation()}"
    )
    rows = [
        row(
            "sandbox",
            "s/sample: oracle vs in-process",
            med["oracle"],
            med["in-process"],
            ratios=ratios,
            samples=times,
            note=note,
        ),  # fmt: skip
        row(
            "sandbox",
            "canonical passed: oracle vs in-process",
            passed["oracle"],
            passed["in-process"],
            unit="samples",
            better="higher",
            note=f"of {len(problems)}",
        ),  # fmt: skip
    ]
    for r in rows:
        print(
            f"{r['metric']:45s} {r['ours']:.4g} vs {r['baseline']:.4g} (ratio {r['ratio']:.3f})  {r['note']}"
        )
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows}))
    return rows


if __name__ == "__main__":
    main()
