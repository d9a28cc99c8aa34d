"""Step time of the sft, dpo and reward stages vs the bare TRL trainers on the same configuration (not a test).

Each stage is run through its public entry point (``tulu_kit.<stage>.run(cfg)``, in this process) and the bare
TRL trainer (``SFTTrainer``, ``DPOTrainer``, ``RewardTrainer``) is built on the same rows, model, batch,
length, steps, learning rate, schedule, clipping and precision; TRL then prepares the rows itself (the token
sequences come out identical). A step is the time between two ``on_step_end`` callbacks (data loading, forward,
backward, optimizer, logging: everything the loop does per step), wall time on a GPU and this process's CPU
time with one torch thread on a CPU (``StepClock``); the first ``--warmup`` steps are left out and the median
of the rest is the run's figure.
Repeats alternate the order (ours, TRL / TRL, ours) and the ratio is the median of the per-repeat ratios.

What differs between the sides is only what does not change the maths: each keeps its own default optimizer
implementation, progress bars and metrics. Gradient checkpointing (TRL's configs default to on) and clipping are
set alike. ``--set optim=adamw_torch_fused`` (any stage config field) measures a change to a stage default.
The device is detected: CUDA (bf16) when present, else CPU (fp32). ``--profile`` runs cProfile over the timed
steps of both sides of one stage and prints the functions where the time goes, side by side.

    .venv/bin/python bench/bench_train.py                       # sft, dpo, reward; tiny model
    .venv/bin/python bench/bench_train.py --stages sft --hidden 256 --layers 4 --repeats 5
    .venv/bin/python bench/bench_train.py --stages sft --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_args, interleaved, paired_ratios, row, write_rows  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def stage_api():
    """The public stage entry points this bench calls: the one place to change if they move or are renamed."""
    from tulu_kit.dpo import DPOConfig
    from tulu_kit.dpo import run as run_dpo
    from tulu_kit.reward import RewardConfig
    from tulu_kit.reward import run as run_reward
    from tulu_kit.sft import SFTConfig
    from tulu_kit.sft import run as run_sft

    return {"sft": (SFTConfig, run_sft), "dpo": (DPOConfig, run_dpo), "reward": (RewardConfig, run_reward)}


# --------------------------------------------------------------------------- timing every Trainer


class StepClock:
    """Step intervals of the Trainer that is training now, in wall time and in this process's CPU time.

    On a CPU shared with other jobs the wall time of a step depends on them; the process CPU time (one torch
    thread, so no thread spins in it) much less, so CPU runs report CPU time and GPU runs wall time.
    """

    def __init__(self):
        self.ends: list[tuple[float, float]] = []
        self.warmup = 0
        self.profiler: cProfile.Profile | None = None

    def reset(self, warmup: int, profile: bool = False) -> None:
        self.ends, self.warmup = [], warmup
        self.profiler = cProfile.Profile() if profile else None

    def step_end(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append((time.perf_counter(), time.process_time()))
        if self.profiler is not None and len(self.ends) == self.warmup:
            self.profiler.enable()

    def train_end(self) -> None:
        if self.profiler is not None:
            self.profiler.disable()

    def step_seconds(self, which: int | None = None) -> float:
        """Median step: wall time (0) or CPU time (1); default: wall on a GPU, CPU time on a CPU."""
        which = (0 if torch.cuda.is_available() else 1) if which is None else which
        ends = [e[which] for e in self.ends]
        gaps = [b - a for a, b in zip(ends, ends[1:])][max(self.warmup - 1, 0) :]
        return statistics.median(gaps)


CLOCK = StepClock()


def install_clock() -> None:
    """Add the clock's callback to every Trainer built in this process (ours and TRL's alike)."""
    import transformers
    from transformers import TrainerCallback

    class ClockCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            CLOCK.step_end()

        def on_train_end(self, args, state, control, **kwargs):
            CLOCK.train_end()

    init = transformers.Trainer.__init__
    if getattr(init, "_bench_clock", False):
        return

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(ClockCallback())

    patched._bench_clock = True
    transformers.Trainer.__init__ = patched


# --------------------------------------------------------------------------- the two sides of each stage


def common(a, out: Path) -> dict:
    """Settings both sides share (TrainingArguments names)."""
    cuda = torch.cuda.is_available()
    return dict(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch,
                learning_rate=1e-4, lr_scheduler_type="linear", logging_steps=1, bf16=cuda,
                use_cpu=not cuda, report_to="none", save_strategy="no", seed=42, data_seed=42,
                dataloader_num_workers=0, gradient_checkpointing=False)  # TRL's configs default to True  # fmt: skip


def ours(stage: str, a, work: Path, out: Path) -> None:
    cls, run = stage_api()[stage]
    kw = dict(model=str(work / "model"), out_dir=str(out), max_length=a.max_length, max_steps=a.steps,
              per_device_train_batch_size=a.batch, learning_rate=1e-4, warmup_ratio=0.0,
              bf16=torch.cuda.is_available(), report_to="none", logging_steps=1, launcher="none")  # fmt: skip
    if stage == "sft":
        kw.update(train_file=str(work / "sft.jsonl"))
    else:
        kw.update(train_file=str(work / "pairs.jsonl"), eval_fraction=0.0)
    if stage == "dpo":
        kw.update(loss_type="dpo", beta=0.1, reference="cached")
    for item in a.set or []:  # e.g. --set optim=adamw_torch_fused, to measure a change to a stage default
        key, _, value = item.partition("=")
        kw[key] = yaml.safe_load(value)
    run(cls(**kw))


def bare_trl(stage: str, a, work: Path, out: Path) -> None:
    from datasets import Dataset

    from tulu_kit.io import read_jsonl
    from tulu_kit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(work / "model")
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    args = common(a, out)
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        rows = Dataset.from_list([{"messages": r["messages"]} for r in read_jsonl(work / "sft.jsonl")])
        cfg = SFTConfig(**args, max_length=a.max_length, assistant_only_loss=True, max_grad_norm=0.0,
                        warmup_steps=0)  # fmt: skip
        SFTTrainer(model=load_model(work / "model", dtype), args=cfg, train_dataset=rows,
                   processing_class=tokenizer).train()  # fmt: skip
    elif stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = Dataset.from_list(list(read_jsonl(work / "pairs.jsonl")))
        cfg = DPOConfig(**args, max_length=a.max_length, loss_type=["sigmoid"], beta=0.1,
                        precompute_ref_log_probs=True, max_grad_norm=0.0, warmup_steps=0.1)  # fmt: skip
        DPOTrainer(model=load_model(work / "model", dtype), args=cfg, train_dataset=rows,
                   processing_class=tokenizer).train()  # fmt: skip
    else:
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        rows = Dataset.from_list(list(read_jsonl(work / "pairs.jsonl")))
        model = AutoModelForSequenceClassification.from_pretrained(
            work / "model", num_labels=1, dtype=getattr(torch, dtype)
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        cfg = RewardConfig(**args, max_length=a.max_length)
        RewardTrainer(model=model, args=cfg, train_dataset=rows, processing_class=tokenizer).train()


def timed_run(fn, stage: str, a, work: Path, profile: bool = False) -> tuple[float, cProfile.Profile | None]:
    with tempfile.TemporaryDirectory(dir=work) as out:
        CLOCK.reset(a.warmup, profile)
        with (
            open(os.devnull, "w") as null,
            redirect_stdout(null),
            redirect_stderr(null),
        ):  # logs, progress bars
            fn(stage, a, work, Path(out))
        if len(CLOCK.ends) < a.warmup + 2:
            raise RuntimeError(f"{stage}: only {len(CLOCK.ends)} steps ran; raise --steps")
        return CLOCK.step_seconds(), CLOCK.profiler


# --------------------------------------------------------------------------- setup, profile, main


def setup(work: Path, a) -> None:
    from tulu_kit.data.synthetic import synthetic_preference, synthetic_sft
    from tulu_kit.io import write_jsonl
    from tulu_kit.models import build_tiny_model

    heads = max(4, a.hidden // 64)
    build_tiny_model(work / "model", hidden_size=a.hidden, num_layers=a.layers, num_heads=heads)
    n = max(200, a.steps * a.batch)
    write_jsonl(work / "sft.jsonl", synthetic_sft(n, seed=0))
    pairs = [p for p in synthetic_preference(n + 50, seed=0) if p["chosen"][-1] != p["rejected"][-1]]
    write_jsonl(work / "pairs.jsonl", pairs[:n])


def top_functions(prof: cProfile.Profile, n: int = 25) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime")
    stats.print_stats(n)
    buf.write("\n--- by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(n)
    return buf.getvalue()


def main() -> None:
    p = add_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument("--stages", nargs="+", default=["sft", "dpo", "reward"], choices=["sft", "dpo", "reward"])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64, help="tiny-model width (64: the quickstart model)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="cProfile both sides of the first stage once")
    p.add_argument(
        "--set", nargs="+", metavar="KEY=VALUE", help="override fields of the stage configs (ours)"
    )
    p.add_argument("--profile-dir", help="with --profile: also write the .prof files here")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads on CPU (1: CPU time is a fair clock)"
    )
    a = p.parse_args()
    if a.quick:
        a.steps, a.warmup = min(a.steps, 20), min(a.warmup, 4)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    install_clock()
    if not torch.cuda.is_available():
        torch.set_num_threads(a.threads)
    clock = "wall" if torch.cuda.is_available() else f"CPU time, {a.threads} torch thread(s)"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        setup(work, a)
        print(f"device {device}; tiny Llama hidden {a.hidden}, layers {a.layers}; batch {a.batch}, max_length "
              f"{a.max_length}; {a.steps} steps, median of the last {a.steps - a.warmup}; {a.repeats} repeats; clock: {clock}\n")  # fmt: skip
        if a.profile:
            stage = a.stages[0]
            for name, fn in (("tulu-kit", ours), ("bare TRL", bare_trl)):
                step, prof = timed_run(fn, stage, a, work, profile=True)
                print(f"===== {stage} {name}: {step * 1000:.1f} ms/step =====\n{top_functions(prof)}")
                if a.profile_dir:  # for snakeviz / pstats
                    Path(a.profile_dir).mkdir(parents=True, exist_ok=True)
                    prof.dump_stats(Path(a.profile_dir) / f"{stage}_{name.split()[-1].lower()}.prof")
            return
        print(f"{'stage':<8}{'tulu-kit ms/step':>18}{'TRL ms/step':>14}{'ratio (median of pairs)':>26}")
        for stage in a.stages:
            got = interleaved(
                {
                    "ours": lambda s=stage: timed_run(ours, s, a, work)[0],
                    "trl": lambda s=stage: timed_run(bare_trl, s, a, work)[0],
                },
                a.repeats,
            )
            ratios = paired_ratios(got["ours"], got["trl"])
            o, t = statistics.median(got["ours"]), statistics.median(got["trl"])
            print(f"{stage:<8}{o * 1000:>18.1f}{t * 1000:>14.1f}{statistics.median(ratios):>26.3f}"
                  f"   per repeat: {', '.join(f'{r:.3f}' for r in ratios)}")  # fmt: skip
            rows.append(row("training", f"{stage} step time vs bare TRL", o * 1000, t * 1000, unit="ms/step",
                            ratios=ratios, samples={k: [round(x * 1000, 2) for x in v] for k, v in got.items()},
                            note=f"{clock}; hidden {a.hidden}, {a.layers} layers, batch {a.batch}, len {a.max_length}"))  # fmt: skip
    write_rows(a.json, rows)


if __name__ == "__main__":
    main()
