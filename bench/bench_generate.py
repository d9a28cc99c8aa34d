"""Batched vs one-at-a-time generation throughput of the eval HF backend (not a test).

    .venv/bin/python bench/bench_generate.py [--model DIR] [--prompts 32] [--new-tokens 64] [--batch-size 8]

Without --model it builds the tiny quickstart model in a temp folder. Prints tokens/s for batch size 1 and for
--batch-size (left padding, the same greedy outputs), and their ratio; the two alternate within each repeat.
On a CPU the clock is this process's CPU time with one torch thread (``_common.fair_clock``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_args, fair_clock, paired_ratios, row, write_rows  # noqa: E402

from tulu_kit.evals.backends import GenParams, HFBackend  # noqa: E402

CLOCK, CLOCK_NAME = fair_clock()


def throughput(
    backend: HFBackend, prompts: list[str], params: GenParams, batch_size: int
) -> tuple[float, list]:
    backend.batch_size = batch_size
    backend.generate(prompts[:batch_size], params)  # warm-up
    start = CLOCK()
    outputs = backend.generate(prompts, params)
    seconds = CLOCK() - start
    tokens = sum(len(backend.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    return tokens / seconds, outputs


def main() -> None:
    ap = add_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    ap.add_argument("--model", help="model folder (default: build the tiny model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.new_tokens = min(args.prompts, 16), min(args.new_tokens, 32)
    torch.manual_seed(0)
    model = args.model
    if model is None:
        from tulu_kit.models import build_tiny_model

        model = str(build_tiny_model(tempfile.mkdtemp() + "/model"))
    backend = HFBackend.load(model)
    prompts = [
        f"Question {i}: what is {i} plus {2 * i}?\nAnswer:" + " step" * (i % 7) for i in range(args.prompts)
    ]
    params = GenParams(max_new_tokens=args.new_tokens)
    got = {"one": [], "many": []}
    for i in range(args.repeats):
        for which in ("one", "many") if i % 2 == 0 else ("many", "one"):
            tps, outs = throughput(backend, prompts, params, 1 if which == "one" else args.batch_size)
            got[which].append(tps)
            if which == "one":
                out_one = outs
            else:
                out_many = outs
    one, many = statistics.median(got["one"]), statistics.median(got["many"])
    same = sum(a == b for a, b in zip(out_one, out_many))
    print(
        f"device={backend.device} threads={torch.get_num_threads()} prompts={args.prompts} "
        f"new_tokens={args.new_tokens}; clock: {CLOCK_NAME}; median of {args.repeats}"
    )
    print(f"batch 1                : {one:8.0f} tok/s")
    print(f"batch {args.batch_size:<17}: {many:8.0f} tok/s")
    ratios = paired_ratios(got["many"], got["one"])
    print(
        f"ratio (batched / single): {statistics.median(ratios):.2f}x; identical greedy outputs: {same}/{len(prompts)}"
    )
    write_rows(args.json, [row("generation", f"HF generate batch {args.batch_size} vs one at a time", many, one,
                               unit="tok/s", better="higher", ratios=ratios, samples=got,
                               note=f"{CLOCK_NAME}; {args.prompts} prompts x {args.new_tokens} new tokens; "
                                    f"identical outputs {same}/{len(prompts)}")])  # fmt: skip


if __name__ == "__main__":
    main()
