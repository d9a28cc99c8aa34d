"""Data-pipeline throughput and packing efficiency: tulu_kit.data vs TRL's own SFT dataset preparation.

On the 2,000-row Stanford Alpaca sample (``../shared/data/alpaca``) and the tiny model's tokenizer with the tulu
template, times (median of ``--repeats``):

- ours: convert (Alpaca -> messages) + template + tokenize + assistant mask (``tokenize_sft``) + BFD packing
  (``pack_rows``);
- TRL: ``SFTTrainer._prepare_dataset`` on the converted ``messages`` rows with ``assistant_only_loss=True`` and
  ``packing=True`` (its ``bfd`` strategy), the same preparation ``SFTTrainer`` runs before training.

Then packing efficiency (real tokens / slots) at max length 2048 and 512: padding-free packing (ours and TRL's)
against padded batches (pad to the longest row of each batch of ``--batch-size`` rows, and pad to max length).
The clock is this process's CPU time (both pipelines run in one thread), so other jobs on the machine matter
less; the two pipelines alternate within each repeat. Without the Alpaca file (``$TULU_KIT_SHARED_DATA/alpaca``,
or ``--alpaca``) the rows are 2,000 synthetic conversations (``tulu_kit.data.synthetic``), and the table says so.
Not a test; prints tables.

    .venv/bin/python bench/bench_data.py
    .venv/bin/python bench/bench_data.py --alpaca path/to/alpaca_data.json --model path/to/model --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_args, paired_ratios, row, write_rows  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
# the same place tests/conftest.py reads the real data from
SHARED_DATA = Path(os.environ.get("TULU_KIT_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_ALPACA = SHARED_DATA / "alpaca" / "alpaca_data_sample2000.json"


def timed_pair(fns: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """CPU seconds of each fn per repeat, alternating their order; and each fn's last result."""
    times, results = {k: [] for k in fns}, {}
    for i in range(repeats):
        for name in list(fns) if i % 2 == 0 else list(fns)[::-1]:
            start = time.process_time()
            results[name] = fns[name]()
            times[name].append(time.process_time() - start)
    return times, results


def ours(raw_rows, kind, tokenizer, max_length):
    from tulu_kit.data.formats import convert_rows
    from tulu_kit.data.packing import pack_rows
    from tulu_kit.data.tokenize import tokenize_sft

    converted = convert_rows(kind, raw_rows).examples
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


def load_rows(path: str) -> tuple[str, list[dict], str]:
    """(converter kind, raw rows, description): the Alpaca file when present, else synthetic conversations."""
    from tulu_kit.data.sources import read_file

    if Path(path).is_file():
        return "alpaca", read_file(path), f"{Path(path).name} (Alpaca)"
    from tulu_kit.data.synthetic import synthetic_sft

    return "messages", synthetic_sft(2000, seed=0), "2000 synthetic conversations (no Alpaca file)"


def main() -> None:
    parser = add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument(
        "--alpaca", default=str(DEFAULT_ALPACA), help="Alpaca JSON (instruction/input/output)"
    )
    parser.add_argument("--model", help="model dir (default: build the tiny model in a temp dir)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per padded batch")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    from tulu_kit.data.formats import convert_rows
    from tulu_kit.data.packing import packing_efficiency, padded_efficiency
    from tulu_kit.data.templates import set_chat_template
    from tulu_kit.models import build_tiny_model, load_tokenizer

    model_dir = args.model or build_tiny_model(Path(tempfile.mkdtemp()) / "model")
    tokenizer = set_chat_template(load_tokenizer(model_dir), "tulu")
    kind, raw, source = load_rows(args.alpaca)
    messages = convert_rows(kind, raw).examples
    trainer = trl_trainer(model_dir, tokenizer, messages[0])
    print(f"{source}: {len(raw)} rows, tokenizer {model_dir} (vocab {len(tokenizer)}), template tulu; "
          f"CPU seconds, median of {args.repeats}\n")  # fmt: skip

    print(
        f"{'max_len':>7} {'pipeline':<44} {'seconds':>8} {'rows/s':>8} {'tokens/s':>10} {'trained tok':>11}"
    )
    efficiency, mean_length, out = {}, {}, []
    for max_length in (2048, 512):
        repeats = args.repeats if max_length == 2048 or not args.quick else 1
        times, results = timed_pair(
            {"ours": lambda m=max_length: ours(raw, kind, tokenizer, m),
             "trl": lambda m=max_length: trl_prepare(trainer, messages, tokenizer, m)}, repeats
        )  # fmt: skip
        t_ours, t_trl = statistics.median(times["ours"]), statistics.median(times["trl"])
        (stats, pack_stats), packed = results["ours"], results["trl"]
        trl_real = sum(len(r["input_ids"]) for r in packed)
        trl_trained = sum(1 for r in packed for lab in r["labels"] if lab != -100)
        label = "ours: convert+template+tokenize+mask+pack"
        print(f"{max_length:>7} {label:<44} {t_ours:8.2f} {len(raw) / t_ours:8.0f} "
              f"{stats.n_tokens / t_ours:10.0f} {stats.n_trained_tokens:>11}")  # fmt: skip
        label = "TRL: _prepare_dataset (messages, bfd pack)"
        print(f"{max_length:>7} {label:<44} {t_trl:8.2f} {len(raw) / t_trl:8.0f} "
              f"{trl_real / t_trl:10.0f} {trl_trained:>11}")  # fmt: skip
        ratios = paired_ratios(times["ours"], times["trl"])
        if repeats == args.repeats:
            out.append(row("data", f"tokenize+mask+pack at {max_length} vs TRL _prepare_dataset", t_ours, t_trl,
                           unit="CPU s", ratios=ratios, samples=times, note=source))  # fmt: skip
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
        print(f"{'':>7} ratio ours/TRL CPU time: {statistics.median(ratios):.3f} "
              f"(TRL/ours throughput {1 / statistics.median(ratios):.2f}x)\n")  # fmt: skip
        e = efficiency[max_length]
        out.append(row("data", f"packing efficiency at {max_length} vs TRL bfd", e["packed (ours, BFD)"],
                       e["packed (TRL, bfd)"], unit="real/slots", better="higher",
                       note=f"padded to longest: {e[f'padded to longest, batch {args.batch_size}']:.3f}"))  # fmt: skip

    print(f"\npacking efficiency (real tokens / slots); mean length {mean_length[2048]:.0f} tokens")
    print(f"{'layout':<30} {'2048':>8} {'512':>8}")
    for key in efficiency[2048]:
        if key != "_rows":
            print(f"{key:<30} {efficiency[2048][key]:8.3f} {efficiency[512][key]:8.3f}")
    rows = {m: "{}/{}".format(*efficiency[m]["_rows"]) for m in (2048, 512)}
    print(f"{'packed rows (ours / TRL)':<30} {rows[2048]:>8} {rows[512]:>8}")
    write_rows(args.json, out)


if __name__ == "__main__":
    main()
