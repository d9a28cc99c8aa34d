"""GPU throughput of the kit's SFT stage and eval generation on a ~1B Llama built from a config (not a test).

One command on a CUDA machine; on any other it prints that it was skipped and exits 0 (``make bench`` shows a
"skipped" row). Nothing is downloaded: the model is TinyLlama-1.1B's architecture (22 layers, hidden 2048,
MLP 5632, 32 heads / 4 KV heads) with random weights, saved with the kit's tiny offline tokenizer; its vocabulary
is the tokenizer's (1,027 tokens, rounded up to 1,152) instead of 32,000, so every generated id decodes and is
counted: 0.97B parameters instead of 1.1B.

Training: ``tulu_kit.sft.run`` in this process, bf16, packing on (padding-free rows of ``--max-length``
tokens), for each attention implementation that is importable (``sdpa`` always, ``flash_attention_2`` when
flash-attn is installed) with gradient checkpointing off and on. Reported per run: tokens/s per GPU (median
step after ``--warmup``; tokens = real tokens of the packed batch), MFU and peak memory. MFU counts the useful
FLOPs only: ``6 N`` per token for the matmul weights (``N`` = parameters without the input embedding) plus
``6 L S d`` per token for causal attention inside each packed example (``S`` its mean length), over the
device's dense bf16 peak (``--peak-tflops`` to override the table). Gradient checkpointing recomputes the
forward, so its MFU counts the same useful FLOPs over a longer step.

Generation: the eval backends (``tulu_kit.evals.backends``) on the trained-from-scratch model: HF ``generate``
(batched, left-padded) and, when vLLM imports, vLLM, on the same prompts; tokens/s of generated tokens.

    python bench/gpu_bench.py                     # ~10 minutes on one H100/H200 with the defaults
    python bench/gpu_bench.py --steps 300 --max-length 4096 --batch 4
    python bench/gpu_bench.py --skip-generation --attn sdpa --checkpointing off
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_args, row, write_rows  # noqa: E402

# dense bf16 peak TFLOP/s by device name (no sparsity); the first key found in the name wins
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0,
               "A800": 312.0, "L40S": 362.0, "L40": 181.0, "A10G": 70.0, "A10": 125.0, "L4": 121.0, "4090": 165.0,
               "3090": 71.0, "V100": 125.0, "T4": 65.0}  # fmt: skip
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=1152, max_position_embeddings=4096, rope_theta=10000.0,
                tie_word_embeddings=False)  # fmt: skip
WORDS = ("the model learns to answer questions about data training tokens packing attention memory speed "
         "gradient batch sequence layer optimizer learning rate loss step evaluation prompt reply").split()  # fmt: skip


def stage_api():
    """The public stage entry point this bench calls: the one place to change if it moves or is renamed."""
    from tulu_kit.sft import SFTConfig, run

    return SFTConfig, run


# --------------------------------------------------------------------------- model and data


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model(folder: Path) -> tuple[Path, int, int]:
    """Save a random-weight ~1B Llama (bf16) with the kit's offline tokenizer; returns (dir, params, matmul params)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tulu_kit.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    cfg = LlamaConfig(**LLAMA_1B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    n_matmul = n - model.model.embed_tokens.weight.numel()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder, n, n_matmul


def write_data(path: Path, rows: int, seed: int = 0) -> Path:
    """Chat rows of 100-1000 words: enough variety in length for packing to matter."""
    from tulu_kit.io import write_jsonl

    rng = random.Random(seed)

    def text(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    data = [{"messages": [{"role": "user", "content": text(rng.randint(20, 200))},
                          {"role": "assistant", "content": text(rng.randint(80, 800))}]} for _ in range(rows)]  # fmt: skip
    return write_jsonl(path, data)


# --------------------------------------------------------------------------- training


class Clock:
    """A TrainerCallback-shaped step clock; the batch token count comes from the collator wrapper."""

    def __init__(self):
        self.ends, self.tokens, self.lengths = [], [], []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                _sync()
                clock.ends.append(time.perf_counter())

        return _CB()


def count_tokens(trainer, clock: Clock) -> None:
    """Wrap the trainer's collator to record each batch's real tokens and mean example length."""
    from tulu_kit.data.packing import sequence_lengths

    inner = trainer.data_collator

    def collate(rows):
        batch = inner(rows)
        if "position_ids" in batch:
            lengths = sequence_lengths(batch["position_ids"][0].tolist())
        else:
            lengths = batch["attention_mask"].sum(1).tolist()
        clock.tokens.append(sum(lengths))
        clock.lengths.append(sum(x * x for x in lengths) / max(sum(lengths), 1))  # token-weighted mean length
        return batch

    trainer.data_collator = collate


def train_once(a, model_dir: Path, data: Path, attn: str, ckpt: bool, n_matmul: int, peak: float) -> dict:
    import transformers

    cls, run = stage_api()
    clock = Clock()
    init = transformers.Trainer.__init__

    def patched(self, *args, **kwargs):  # the clock and token counter join whatever trainer the stage builds
        init(self, *args, **kwargs)
        self.add_callback(clock.callback())
        count_tokens(self, clock)

    transformers.Trainer.__init__ = patched
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = cls(model=str(model_dir), train_file=str(data), out_dir=out, chat_template="tulu",
                      max_length=a.max_length, packing=True, max_steps=a.steps, per_device_train_batch_size=a.batch,
                      learning_rate=1e-4, warmup_ratio=0.0, bf16=cuda, attn_implementation=attn,
                      gradient_checkpointing=ckpt, report_to="none", logging_steps=max(a.steps // 10, 1),
                      launcher="none")  # fmt: skip
            run(cfg)
    finally:
        transformers.Trainer.__init__ = init
    gaps = [b - x for x, b in zip(clock.ends, clock.ends[1:])][a.warmup - 1 :]
    # the DataLoader may prefetch: step i consumed batch i
    tokens = clock.tokens[a.warmup : a.warmup + len(gaps)]
    tok_s = statistics.median(t / g for t, g in zip(tokens, gaps))
    s_mean = statistics.mean(clock.lengths)
    flops_per_token = 6 * n_matmul + 6 * LLAMA_1B["num_hidden_layers"] * s_mean * LLAMA_1B["hidden_size"]
    return {
        "attn": attn,
        "checkpointing": ckpt,
        "tokens_per_s": tok_s,
        "step_s": statistics.median(gaps),
        "mfu": tok_s * flops_per_token / (peak * 1e12) if peak else None,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "tokens_per_step": statistics.median(tokens),
        "mean_example_tokens": s_mean,
    }


# --------------------------------------------------------------------------- generation


def generation(a, model_dir: Path) -> list[dict]:
    from tulu_kit.evals.backends import GenParams, HFBackend

    prompts = [
        " ".join(random.Random(i).choice(WORDS) for _ in range(20 + i % 50)) for i in range(a.gen_prompts)
    ]
    params = GenParams(max_new_tokens=a.gen_tokens)
    out = []
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    backend = HFBackend.load(str(model_dir), dtype=dtype, batch_size=a.gen_batch)
    backend.generate(prompts[: a.gen_batch], params)  # warm-up
    _sync()
    start = time.perf_counter()
    texts = backend.generate(prompts, params)
    _sync()
    seconds = time.perf_counter() - start
    n = sum(len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    out.append({"backend": f"HF generate (batch {a.gen_batch})", "tokens_per_s": n / seconds, "tokens": n})
    del backend
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import vllm  # noqa: F401
    except ImportError:
        out.append({"backend": "vLLM", "tokens_per_s": None, "note": "not installed"})
        return out
    from tulu_kit.evals.backends import VLLMBackend

    backend = VLLMBackend.load(str(model_dir), dtype="bfloat16", gpu_memory_utilization=0.5)
    backend.generate(prompts[:8], params)
    start = time.perf_counter()
    texts = backend.generate(prompts, params)
    seconds = time.perf_counter() - start
    n = sum(len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    out.append({"backend": "vLLM", "tokens_per_s": n / seconds, "tokens": n})
    return out


# --------------------------------------------------------------------------- main


def main() -> int:
    p = add_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument(
        "--steps", type=int, default=60, help="optimizer steps per configuration (a few hundred: 300)"
    )
    p.add_argument("--warmup", type=int, default=10, help="first steps left out of the median")
    p.add_argument("--max-length", type=int, default=4096, help="tokens per packed row")
    p.add_argument("--batch", type=int, default=4, help="packed rows per step")
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash_attention_2"])
    p.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: from its name)")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--gen-prompts", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--out", help="also write the full results JSON here")
    p.add_argument("--cpu-smoke", action="store_true", help="check the script on a CPU with a tiny model")
    a = p.parse_args()
    if a.quick:  # inside `make bench`: a shorter look
        a.steps, a.warmup, a.gen_prompts = min(a.steps, 30), min(a.warmup, 5), min(a.gen_prompts, 64)
    if a.cpu_smoke:
        LLAMA_1B.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2)  # fmt: skip
        a.steps, a.warmup, a.max_length, a.batch, a.gen_prompts, a.gen_tokens, a.gen_batch = (
            6,
            2,
            256,
            2,
            8,
            8,
            4,
        )
    elif not torch.cuda.is_available():
        print("gpu_bench: skipped, no CUDA device (run it on a GPU machine: python bench/gpu_bench.py)")
        write_rows(a.json, [row("gpu", "~1B Llama SFT tokens/s, MFU; generation", None, unit="", better="",
                                note="skipped: no CUDA device on this machine")])  # fmt: skip
        return 0
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke test)"
    peak = a.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)
    attns = []
    for attn in a.attn:
        if attn == "flash_attention_2":
            try:
                import flash_attn  # noqa: F401
            except ImportError:
                print("flash-attn is not installed: flash_attention_2 skipped")
                continue
        attns.append(attn)
    results = {"device": name, "peak_tflops": peak, "train": [], "generation": [], "config": vars(a)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        model_dir, n, n_matmul = build_model(Path(tmp) / "model")
        data = write_data(Path(tmp) / "sft.jsonl", rows=max(400, a.batch * a.max_length * 40 // 1500))
        print(f"{name} (peak {peak:.0f} TFLOP/s bf16); Llama {n / 1e9:.2f}B params ({n_matmul / 1e9:.2f}B matmul); "
              f"packed rows of {a.max_length} x {a.batch} per step; {a.steps} steps, median after {a.warmup}")  # fmt: skip
        print(f"{'attention':<20}{'grad ckpt':>10}{'tokens/s/GPU':>14}{'MFU':>8}{'s/step':>9}{'peak GB':>9}")
        for attn in attns:
            for ck in a.checkpointing:
                try:
                    r = train_once(a, model_dir, data, attn, ck == "on", n_matmul, peak)
                except torch.OutOfMemoryError:
                    r = {
                        "attn": attn,
                        "checkpointing": ck == "on",
                        "tokens_per_s": None,
                        "note": "out of memory",
                    }
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                results["train"].append(r)
                if r["tokens_per_s"] is None:
                    print(f"{attn:<20}{ck:>10}  out of memory")
                    rows.append(row("gpu", f"SFT {attn}, grad ckpt {ck}", None, unit="tok/s/GPU", note="OOM"))
                    continue
                mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
                print(
                    f"{attn:<20}{ck:>10}{r['tokens_per_s']:>14,.0f}{mfu:>8}{r['step_s']:>9.3f}{r['peak_gb']:>9.1f}"
                )
                rows.append(row("gpu", f"SFT ~1B {attn}, grad ckpt {ck}", r["tokens_per_s"], unit="tok/s/GPU",
                                better="higher", note=f"MFU {mfu}; peak {r['peak_gb']:.0f} GB; {name}"))  # fmt: skip
        if not a.skip_generation:
            for g in generation(a, model_dir):
                results["generation"].append(g)
                tps = g["tokens_per_s"]
                print(
                    f"generation {g['backend']:<26} " + (f"{tps:10,.0f} tok/s" if tps else g.get("note", ""))
                )
                rows.append(row("gpu", f"generation {g['backend']}", tps, unit="tok/s", better="higher",
                                note=g.get("note", f"{a.gen_prompts} prompts x {a.gen_tokens} new tokens")))  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    write_rows(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
