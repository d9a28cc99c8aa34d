"""Steps per second and peak memory of our SFT stage vs bare TRL SFTTrainer on the same tiny config.

Both train the same model (built by ``build_tiny_model``; size set by --hidden/--layers) on the same quickstart
mix, same batch, length, steps, precision and assistant-only loss; each runs in its own subprocess so peak memory
(CUDA peak allocated on a GPU, process max RSS on CPU) is its own. Step time is the median over the steps after
the first --warmup ones. The device is detected: CUDA (bf16) when present, else CPU (fp32).

    python bench/bench_sft.py                                   # CPU, tiny model, full fine-tuning
    python bench/bench_sft.py --mode qlora --hidden 1024 --layers 8 --steps 40    # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    return StepTimer()


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(a, work: Path, timer) -> None:
    from tulu_kit.sft import SFTConfig, run

    cfg = SFTConfig(
        model=str(work / "model"), train_file=str(work / "sft.jsonl"), out_dir=str(work / "ours"),
        max_length=a.max_length, max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=1e-4,
        bf16=torch.cuda.is_available(), report_to="none", launcher="none", logging_steps=a.steps,
        use_lora=a.mode != "full", load_in_4bit=a.mode == "qlora", lora_r=16, lora_alpha=32, lora_dropout=0.0,
        merge_adapter=False,
    )  # fmt: skip
    run(cfg, callbacks=[timer])


def run_trl(a, work: Path, timer) -> None:
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from tulu_kit.io import read_jsonl
    from tulu_kit.models import add_lora, load_model_for_training, load_tokenizer

    bf16 = torch.cuda.is_available()
    model = load_model_for_training(
        work / "model", dtype="bfloat16" if bf16 else "float32", load_in_4bit=a.mode == "qlora"
    )
    if a.mode != "full":
        model = add_lora(
            model, 16, 32, 0.0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj".split(",")
        )
    rows = [{"messages": r["messages"]} for r in read_jsonl(work / "sft.jsonl")]
    args = TRLSFTConfig(
        output_dir=str(work / "trl"), max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=1e-4,
        max_length=a.max_length, assistant_only_loss=True, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False, report_to="none", logging_steps=a.steps, save_strategy="no",
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(work / "model"), callbacks=[timer],
    )  # fmt: skip
    trainer.train()


def child(a) -> None:
    work = Path(a.work)
    timer = _timer()
    (run_ours if a.which == "ours" else run_trl)(a, work, timer)
    steps = timer.times[a.warmup :] or timer.times
    step_s = statistics.median(steps)
    print(
        "BENCH "
        + json.dumps({"which": a.which, "step_s": step_s, "steps_per_s": 1 / step_s, "peak_mb": _peak_mb()})
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["full", "lora", "qlora"], default="full")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--which", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.which:
        return child(a)

    from tulu_kit.data.synthetic import synthetic_sft
    from tulu_kit.io import write_jsonl
    from tulu_kit.models import build_tiny_model

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        heads = max(4, a.hidden // 64)
        build_tiny_model(Path(tmp) / "model", hidden_size=a.hidden, num_layers=a.layers, num_heads=heads)
        write_jsonl(Path(tmp) / "sft.jsonl", synthetic_sft(max(600, a.steps * a.batch), seed=0))
        results = {}
        for which in ("trl", "ours"):
            cmd = [sys.executable, __file__, "--which", which, "--work", tmp] + sys.argv[1:]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
            if line is None:
                sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
            results[which] = json.loads(line[6:])
    t, o = results["trl"], results["ours"]
    print(f"device: {device}; mode {a.mode}; hidden {a.hidden}, layers {a.layers}; batch {a.batch}, "
          f"max_length {a.max_length}, {a.steps} steps (median of the last {a.steps - a.warmup})")  # fmt: skip
    print(f"{'':12}{'steps/s':>10}{'peak MB':>10}")
    for name, r in (("bare TRL", t), ("tulu-kit", o)):
        print(f"{name:12}{r['steps_per_s']:>10.2f}{r['peak_mb']:>10.0f}")
    print(f"overhead: tulu-kit step time / TRL step time = {o['step_s'] / t['step_s']:.3f}; "
          f"peak memory ratio = {o['peak_mb'] / t['peak_mb']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
