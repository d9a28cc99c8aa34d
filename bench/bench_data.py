"""Data-pipeline throughput and packing efficiency: tulu_kit.data vs TRL's own SFT dataset preparation.

On the 2,000-row Stanford Alpaca sample (``../shared/data/alpaca``) and the tiny model's tokenizer with the tulu
template, times (median of ``--repeats``):

- ours: convert (Alpaca -> messages) + template + tokenize + assistant mask (``tokenize_sft``) + BFD packing
  (``pack_rows``);
- TRL: ``SFTTrainer._prepare_dataset`` on the converted ``messages`` rows with ``assistant_only_loss=True`` and
  ``packing=True`` (its ``bfd`` strategy), the same preparation ``SFTTrainer`` runs before training.

Then packing efficiency (real tokens / slots) at max length 2048 and 512: padding-free packing (ours and TRL's)
against padded batches (pad to the longest row of each batch of ``--batch-size`` rows, and pad to max length).
Not a test; prints tables.

    .venv/bin/python bench/bench_data.py
    .venv/bin/python bench/bench_data.py --alpaca path/to/alpaca_data.json --model path/to/model --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_ALPACA = REPO.parent / "shared" / "data" / "alpaca" / "alpaca_data_sample2000.json"


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def ours(raw_rows, tokenizer, max_length):
    from tulu_kit.data.formats import convert_rows
    from tulu_kit.data.packing import pack_rows
    from tulu_kit.data.tokenize import tokenize_sft

    converted = convert_rows("alpaca", raw_rows).examples
    rows, stats = tokenize_sft(converted, tokenizer, max_length)
    packed, pack_stats = pack_rows(rows, max_length)
    return stats, pack_stats


def trl_trainer(model_dir, tokenizer, example):
    """An SFTTrainer built once (on a 1-row dataset, preparation skipped) to call its ``_prepare_dataset``."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tulu_kit.models import load_model

    args = SFTConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, report_to=[],
                     assistant_only_loss=True, dataset_kwargs={"skip_prepare_dataset": True})  # fmt: skip
    dummy = Dataset.from_list([{"messages": example["messages"]}])
    return SFTTrainer(model=load_model(model_dir), args=args, train_dataset=dummy, processing_class=tokenizer)


def trl_prepare(trainer, messages, tokenizer, max_length):
    from datasets import Dataset

    args = trainer.args
    args.max_length, args.packing, args.packing_strategy = max_length, True, "bfd"
    dataset = Dataset.from_list([{"messages": m["messages"]} for m in messages])
    return trainer._prepare_dataset(dataset, tokenizer, args, True, None, "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--alpaca", default=str(DEFAULT_ALPACA), help="Alpaca JSON (instruction/input/output)"
    )
    parser.add_argument("--model", help="model dir (default: build the tiny model in a temp dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per padded batch")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    from tulu_kit.data.formats import convert_rows
    from tulu_kit.data.packing import packing_efficiency, padded_efficiency
    from tulu_kit.data.sources import read_file
    from tulu_kit.data.templates import set_chat_template
    from tulu_kit.models import build_tiny_model, load_tokenizer

    model_dir = args.model or build_tiny_model(Path(tempfile.mkdtemp()) / "model")
    tokenizer = set_chat_template(load_tokenizer(model_dir), "tulu")
    raw = read_file(args.alpaca)
    messages = convert_rows("alpaca", raw).examples
    trainer = trl_trainer(model_dir, tokenizer, messages[0])
    print(f"{len(raw)} Alpaca rows, tokenizer {model_dir} (vocab {len(tokenizer)}), template tulu\n")

    print(
        f"{'max_len':>7} {'pipeline':<44} {'seconds':>8} {'rows/s':>8} {'tokens/s':>10} {'trained tok':>11}"
    )
    efficiency, mean_length = {}, {}
    for max_length in (2048, 512):
        t_ours, (stats, pack_stats) = timed(lambda m=max_length: ours(raw, tokenizer, m), args.repeats)
        t_trl, packed = timed(lambda m=max_length: trl_prepare(trainer, messages, tokenizer, m), args.repeats)
        trl_real = sum(len(r["input_ids"]) for r in packed)
        trl_trained = sum(1 for r in packed for lab in r["labels"] if lab != -100)
        label = "ours: convert+template+tokenize+mask+pack"
        print(f"{max_length:>7} {label:<44} {t_ours:8.2f} {len(raw) / t_ours:8.0f} "
              f"{stats.n_tokens / t_ours:10.0f} {stats.n_trained_tokens:>11}")  # fmt: skip
        label = "TRL: _prepare_dataset (messages, bfd pack)"
        print(f"{max_length:>7} {label:<44} {t_trl:8.2f} {len(raw) / t_trl:8.0f} "
              f"{trl_real / t_trl:10.0f} {trl_trained:>11}")  # fmt: skip
        lengths = stats.lengths
        mean_length[max_length] = statistics.mean(lengths)
        efficiency[max_length] = {
            "packed (ours, BFD)": packing_efficiency(lengths, max_length),
            "packed (TRL, bfd)": trl_real / (len(packed) * max_length),
            f"padded to longest, batch {args.batch_size}": padded_efficiency(lengths, args.batch_size),
            "padded to max_length": padded_efficiency(
                lengths, args.batch_size, max_length=max_length, pad_to_max=True
            ),
            "_rows": (pack_stats.n_bins, len(packed)),
        }
        print(f"{'':>7} ratio ours/TRL throughput: {t_trl / t_ours:.2f}x\n")

    print(f"\npacking efficiency (real tokens / slots); mean length {mean_length[2048]:.0f} tokens")
    print(f"{'layout':<30} {'2048':>8} {'512':>8}")
    for key in efficiency[2048]:
        if key != "_rows":
            print(f"{key:<30} {efficiency[2048][key]:8.3f} {efficiency[512][key]:8.3f}")
    rows = {m: "{}/{}".format(*efficiency[m]["_rows"]) for m in (2048, 512)}
    print(f"{'packed rows (ours / TRL)':<30} {rows[2048]:>8} {rows[512]:>8}")


if __name__ == "__main__":
    main()
