"""GRPO step time: the kit's ``grpo`` stage vs bare TRL ``GRPOTrainer`` on the same configuration.

Both get the same tiny model (``build_tiny_model``), the same toy prompts (``synthetic_arithmetic``), the same
``trl.GRPOConfig`` (built once by ``tulu_kit.grpo.trl_args``), the same reward function and seed, so they sample
the same completions; the kit's run adds only what its stage adds (row checks, prompt-length filter, the
checkpoint callback). Runs alternate (kit, TRL, kit, TRL, ...) so load on a shared machine hits both alike; the
step time is the median over all steps after the first of each run, wall clock and CPU time (this process, all
threads): on a shared CPU machine the wall clock follows the other tenants' load, so the verdict (more than 5%
overhead is a defect) uses CPU time on CPU and wall time on a GPU. On CPU torch runs one thread (--threads).

    python bench/bench_grpo.py                     # CPU, fp32
    python bench/bench_grpo.py --repeats 3 --steps 8 --generations 8 --completion 16
"""

from __future__ import annotations

import argparse
import json
import statistics
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
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append((time.perf_counter() - self.t0, time.process_time() - self.c0))

    return StepTimer()


def config(a, work: Path, out: str):
    from tulu_kit.grpo import GRPOConfig

    return GRPOConfig(
        model=str(work / "model"), out_dir=str(work / out), synthetic_size=256, max_steps=a.steps,
        num_generations=a.generations, per_device_train_batch_size=a.generations * a.prompts,
        gradient_accumulation_steps=1, max_completion_length=a.completion, max_length=64, learning_rate=1e-4,
        beta=a.beta, logging_steps=1, report_to="none", log_completions=False, generation="hf",
        bf16=torch.cuda.is_available(),
    )  # fmt: skip


def run_kit(a, work: Path, i: int) -> list[float]:
    from tulu_kit import grpo, training

    timer = _timer()
    cfg = config(a, work, f"kit{i}")
    trainer, _ = grpo.build_trainer(cfg, callbacks=[timer])
    training.fit(trainer, cfg)
    return timer.times[1:]


def run_trl(a, work: Path, i: int) -> list[float]:
    from trl import GRPOTrainer

    from tulu_kit import grpo, rewards
    from tulu_kit.models import load_model, load_tokenizer

    timer = _timer()
    cfg = config(a, work, f"trl{i}")
    tokenizer = load_tokenizer(cfg.model)
    dataset, _ = grpo.prompt_dataset(
        grpo.load_rows(cfg), tokenizer, cfg.max_length - cfg.max_completion_length
    )
    trainer = GRPOTrainer(
        model=load_model(cfg.model, dtype=cfg.dtype),
        reward_funcs=rewards.trl_reward_funcs(),
        args=grpo.trl_args(cfg),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    return timer.times[1:]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--completion", type=int, default=8, help="max_completion_length")
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--quick", action="store_true", help="make bench's sizes (the defaults)")
    p.add_argument("--json", help="also write the row for bench/run_all.py here")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        torch.set_num_threads(a.threads)
    from tulu_kit.models import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "model", seed=0)
        kit, trl = [], []
        for i in range(a.repeats):
            kit += run_kit(a, work, i)
            trl += run_trl(a, work, i)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    key = "step_s" if device == "cuda" else "cpu_s"
    rows = []
    for name, times in (("tulu_kit grpo", kit), ("bare TRL GRPOTrainer", trl)):
        rows.append({"bench": "grpo", "trainer": name, "device": device, "steps_timed": len(times),
                     "step_s": statistics.median(t[0] for t in times),
                     "cpu_s": statistics.median(t[1] for t in times)})  # fmt: skip
    rows[0]["overhead"] = round(rows[0][key] / rows[1][key] - 1, 4)
    shape = f"{a.prompts} prompts x {a.generations} generations x {a.completion} tokens, beta {a.beta}"
    print(
        f"GRPO step time ({device}, tiny model, {shape}; median of {len(kit)} steps each; verdict on {key})"
    )
    for r in rows:
        line = f"  {r['trainer']:<22} wall {r['step_s']:.4f} s/step  cpu {r['cpu_s']:.4f} s/step"
        if "overhead" in r:
            line += f"  overhead {r['overhead']:+.1%}" + ("  DEFECT (> 5%)" if r["overhead"] > 0.05 else "")
        print(line)
    if a.json:  # one row of make bench's table: kit vs bare TRL on the same configuration
        table_row = {"group": "rl", "metric": "grpo: step time vs bare TRL GRPOTrainer", "ours": rows[0][key],
                     "baseline": rows[1][key], "ratio": rows[0][key] / rows[1][key], "unit": f"{key} / step",
                     "better": "lower", "note": shape, "samples": {}}  # fmt: skip
        Path(a.json).write_text(json.dumps({"rows": [table_row]}))
    return rows


if __name__ == "__main__":
    main()
