"""Peak memory of DPO training: cached reference log-probs vs a reference model kept in memory (not a test).

Each mode trains the same model on the same pairs for a few steps in its own process, so the peaks do not mix:
peak CUDA memory allocated on a GPU, peak process RSS on CPU. With `reference=cached` the reference log-probs
are computed in one pass before training (tulu_kit.dpo) and no second model is loaded; with `reference=model`
TRL keeps a frozen copy of the policy next to it.

Run:  .venv/bin/python bench/bench_dpo_memory.py [--hidden 512 --layers 8 --steps 4]
``--quick`` (make bench): a 256-wide, 4-layer model, 2 steps; peaks are medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_args, row, write_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _peak_mb() -> tuple[str, float]:
    import torch

    if torch.cuda.is_available():
        return "cuda max_memory_allocated", torch.cuda.max_memory_allocated() / 2**20
    import resource

    return "process peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    import logging

    from tulu_kit.dpo import DPOConfig, train

    logging.disable(logging.WARNING)
    cfg = DPOConfig(
        model=args.model, train_file=args.data, out_dir=args.out, reference=args.mode, loss_type="dpo", beta=0.1,
        learning_rate=1e-5, max_steps=args.steps, per_device_train_batch_size=args.batch, max_length=args.max_length,
        eval_fraction=0.0, bf16=args.bf16, logging_steps=args.steps,
    )  # fmt: skip
    train(cfg)
    what, mb = _peak_mb()
    print("RESULT " + json.dumps({"mode": args.mode, "what": what, "peak_mb": round(mb, 1)}))


def _setup(tmp: Path, args) -> tuple[Path, Path]:
    from tulu_kit.data.synthetic import synthetic_preference
    from tulu_kit.io import write_jsonl
    from tulu_kit.models import build_tiny_model

    heads = max(1, args.hidden // 64)
    model = build_tiny_model(tmp / "model", hidden_size=args.hidden, num_layers=args.layers, num_heads=heads)
    data = write_jsonl(tmp / "pairs.jsonl", synthetic_preference(args.batch * args.steps, seed=0))
    return model, data


def main() -> None:
    p = add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=1)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--mode", choices=["cached", "model"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return worker(args)
    if args.quick:
        args.hidden, args.layers, args.steps = 256, 4, 2
    with tempfile.TemporaryDirectory() as tmp:
        model, data = _setup(Path(tmp), args)
        from tulu_kit.models import load_model

        n_params = sum(t.numel() for t in load_model(model).parameters())
        results = {"cached": [], "model": []}
        for mode in [
            m
            for i in range(args.repeats)
            for m in (("cached", "model") if i % 2 == 0 else ("model", "cached"))
        ]:
            cmd = [sys.executable, __file__, "--mode", mode, "--model", str(model), "--data", str(data),
                   "--out", f"{tmp}/out_{mode}", "--steps", str(args.steps), "--batch", str(args.batch),
                   "--max-length", str(args.max_length)] + (["--bf16"] if args.bf16 else [])  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
            results[mode].append(json.loads(line[7:]))
    what = results["cached"][0]["what"]
    cached, model_mb = (statistics.median(r["peak_mb"] for r in results[m]) for m in ("cached", "model"))
    weights_mb = n_params * (2 if args.bf16 else 4) / 2**20
    print(f"model: {n_params / 1e6:.1f}M parameters ({weights_mb:.0f} MB of weights), batch {args.batch}, "
          f"max_length {args.max_length}, {args.steps} steps; metric: {what}, median of {args.repeats}")  # fmt: skip
    print(f"{'reference':<22}{'peak MB':>10}")
    print(f"{'cached log-probs':<22}{cached:>10.1f}")
    print(f"{'model in memory':<22}{model_mb:>10.1f}")
    print(
        f"saved: {model_mb - cached:.1f} MB ({model_mb / cached:.2f}x); one copy of the weights is {weights_mb:.0f} MB"
    )
    write_rows(args.json, [row("dpo memory", "cached reference log-probs vs reference model in memory", cached,
                               model_mb, unit="peak MB", note=f"{what}; {n_params / 1e6:.1f}M params, "
                               f"weights {weights_mb:.0f} MB")])  # fmt: skip


if __name__ == "__main__":
    main()
