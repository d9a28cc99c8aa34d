"""PPO's speed on the toy task: iterations per second and the share of time in generation vs training.

One PPO run of the kit's own loop (``tulu_kit.ppo``) on a model built by ``build_tiny_model`` (size set by
--hidden/--layers), on the offline toy task (``train_file: synthetic_arithmetic``), in this process. Each
iteration's rollout phase (generate, log-probs, reference, values, rewards, GAE) and update phase (PPO epochs)
are timed by the stage itself (``rollout_s`` / ``train_s`` in ``log_history.jsonl``); the rows are medians over
the iterations after the first --warmup ones. The device is detected: CUDA (bf16) when present, else CPU (fp32).

    python bench/bench_rl.py                                   # CPU, tiny model
    python bench/bench_rl.py --hidden 1024 --layers 8 --response-length 256 --iterations 20   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_args, row  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def bench_ppo(a: argparse.Namespace, work: Path) -> dict:
    from tulu_kit import ppo
    from tulu_kit.io import read_jsonl
    from tulu_kit.models import build_tiny_model

    heads = max(4, a.hidden // 64)
    model = build_tiny_model(work / "model", hidden_size=a.hidden, num_layers=a.layers, num_heads=heads)
    cfg = ppo.PPOConfig(
        model=str(model),
        out_dir=str(work / "ppo"),
        train_file="synthetic_arithmetic",
        max_steps=a.iterations,
        rollout_batch_size=a.batch,
        per_device_train_batch_size=a.batch // 2,
        gradient_accumulation_steps=2,
        response_length=a.response_length,
        max_length=a.response_length + 128,
        num_ppo_epochs=a.ppo_epochs,
        learning_rate=1e-4,
        bf16=torch.cuda.is_available(),
        logging_steps=max(1, a.iterations),
    )
    ppo.run(cfg)
    history = read_jsonl(work / "ppo" / "log_history.jsonl")[a.warmup :]
    gen = statistics.median(h["rollout_s"] for h in history)
    train = statistics.median(h["train_s"] for h in history)
    return {"iteration_s": gen + train, "rollout_s": gen, "train_s": train,
            "tokens": statistics.median(h["response_length"] for h in history)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="first iterations left out of the medians")
    p.add_argument("--batch", type=int, default=16, help="prompts per iteration (rollout_batch_size)")
    p.add_argument("--response-length", type=int, default=16)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    add_args(
        p, repeats=1
    )  # make bench's contract: --quick, --repeats, --json (iterations are the repeats here)
    a = p.parse_args()
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        torch.set_num_threads(1)  # a tiny model: more threads only contend
        device = f"CPU ({os.cpu_count()} cores, 1 thread)"
    with tempfile.TemporaryDirectory() as tmp:
        r = bench_ppo(a, Path(tmp))
    print(f"PPO on {device}: hidden {a.hidden}, {a.layers} layers, {a.batch} prompts x {a.response_length} new tokens "
          f"max, {a.ppo_epochs} PPO epochs; medians over iterations {a.warmup + 1}..{a.iterations}")  # fmt: skip
    print(f"{'what':<28}{'value':>12}")
    print(f"{'iterations / s':<28}{1 / r['iteration_s']:>12.3f}")
    print(f"{'seconds / iteration':<28}{r['iteration_s']:>12.3f}")
    print(f"{'generation (rollout) share':<28}{r['rollout_s'] / r['iteration_s']:>12.1%}")
    print(f"{'training (update) share':<28}{r['train_s'] / r['iteration_s']:>12.1%}")
    print(f"{'response tokens (median)':<28}{r['tokens']:>12.1f}")
    if a.json:
        share = r["rollout_s"] / r["iteration_s"]
        rows = [
            row("rl", "ppo: iterations per second", 1 / r["iteration_s"], unit="it/s", better="higher",
                note=f"{a.batch} prompts x {a.response_length} tokens; generation {share:.0%}, training {1 - share:.0%}"),
        ]  # fmt: skip
        Path(a.json).write_text(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
