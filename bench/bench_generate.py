"""Batched vs one-at-a-time generation throughput of the eval HF backend (not a test).

    .venv/bin/python bench/bench_generate.py [--model DIR] [--prompts 32] [--new-tokens 64] [--batch-size 8]

Without --model it builds the tiny quickstart model in a temp folder. Prints tokens/s for batch size 1 and for
--batch-size (left padding, the same greedy outputs), and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tulu_kit.evals.backends import GenParams, HFBackend


def throughput(
    backend: HFBackend, prompts: list[str], params: GenParams, batch_size: int
) -> tuple[float, list]:
    backend.batch_size = batch_size
    backend.generate(prompts[:batch_size], params)  # warm-up
    start = time.perf_counter()
    outputs = backend.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(backend.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    return tokens / seconds, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: build the tiny model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
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
    one, out_one = throughput(backend, prompts, params, 1)
    many, out_many = throughput(backend, prompts, params, args.batch_size)
    same = sum(a == b for a, b in zip(out_one, out_many))
    print(
        f"device={backend.device} threads={torch.get_num_threads()} prompts={args.prompts} new_tokens={args.new_tokens}"
    )
    print(f"batch 1                : {one:8.0f} tok/s")
    print(f"batch {args.batch_size:<17}: {many:8.0f} tok/s")
    print(f"ratio (batched / single): {many / one:.2f}x; identical greedy outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
