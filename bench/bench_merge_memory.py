"""Peak memory of streamed merging and weight diffs vs loading whole models (tulu_kit.merge / weight_diff).

Builds a random Llama checkpoint family (base, a, b) saved in small shards, then runs each operation in a new
process and samples its memory (/proc/self/status every 2 ms): the peak of anonymous memory (what a merge
really allocates) and the peak RSS (VmHWM, which also counts file pages read through mmap). Baseline = the
same imports with no work. "x shard" / "x model" divide the peak (anonymous memory for the streamed rows; the
larger of the two for the naive row, whose tensors are mmap-backed) by the shard and model sizes. A streamed
peak that stays flat when the model doubles is the point. Each figure is the median of ``--repeats`` runs.
``--quick`` (make bench): one 8-layer model and the naive, linear and weight-diff paths. Not a test; prints a table.

    .venv/bin/python bench/bench_merge_memory.py                  # 130 and 250 MiB models, 20 MB shards
    .venv/bin/python bench/bench_merge_memory.py --layers 16 32 --shard 50MB
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

CHILD = r"""
import json, sys, threading, time
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, val = line.partition(":")
        if key in ("RssAnon", "VmHWM"):
            out[key] = int(val.split()[0]) / 1024
    return out
peak = {"RssAnon": 0.0}
stop = False
def sample():
    while not stop:
        peak["RssAnon"] = max(peak["RssAnon"], status()["RssAnon"])
        time.sleep(0.002)
import torch, transformers, safetensors, mergekit.merge, tulu_kit.merge, tulu_kit.weight_diff  # same imports
base_anon, base_hwm = status()["RssAnon"], status()["VmHWM"]
threading.Thread(target=sample, daemon=True).start()
op, root, shard = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.time()
if op == "naive_linear":  # what open-instruct merge_models.py and Alpaca weight_diff.py do: whole state dicts
    from safetensors.torch import load_file, save_file
    from tulu_kit.weight_diff import weight_map
    sds = []
    for name in ("a", "b"):
        sd = {}
        for f in sorted(set(weight_map(f"{root}/{name}").values())):
            sd.update(load_file(f))
        sds.append(sd)
    save_file({k: (sds[0][k] + sds[1][k]) / 2 for k in sds[0]}, f"{root}/out_naive.safetensors")
elif op in ("linear", "ties"):
    from tulu_kit.merge import merge_models
    kw = {"base_model": f"{root}/base", "density": 0.5} if op == "ties" else {}
    merge_models([f"{root}/a", f"{root}/b"], f"{root}/out_{op}", op, max_shard_size=shard, **kw)
elif op == "make_diff":
    from tulu_kit.weight_diff import make_diff
    make_diff(f"{root}/base", f"{root}/a", f"{root}/diff", max_shard_size=shard)
elif op == "recover":
    from tulu_kit.weight_diff import recover
    recover(f"{root}/base", f"{root}/diff", f"{root}/recovered", max_shard_size=shard)
stop = True
time.sleep(0.01)
end = status()
print(json.dumps({"anon": peak["RssAnon"] - base_anon, "hwm": end["VmHWM"] - base_hwm, "s": time.time()-t0}))
"""


def build_family(root: Path, layers: int, hidden: int, vocab: int, shard: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tulu_kit.models import build_tiny_tokenizer
    from tulu_kit.weight_diff import parse_size, tensor_specs

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False,
    )  # fmt: skip
    tok = build_tiny_tokenizer()
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(
                    0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * bool(seed)
                )
        model.save_pretrained(root / name, max_shard_size=shard)
        tok.save_pretrained(root / name)
    specs = tensor_specs(root / "a")
    sizes = [4 * torch.Size(shape).numel() for _, shape in specs.values()]
    return {
        "model_mb": sum(sizes) / 2**20,
        "largest_tensor_mb": max(sizes) / 2**20,
        "shard_mb": parse_size(shard) / 2**20,
        "shards": len(list((root / "a").glob("*.safetensors"))),
    }


OPS = [
    ("naive_linear", "linear, whole models (naive)"),
    ("linear", "linear, mergekit streamed"),
    ("ties", "ties, mergekit streamed"),
    ("make_diff", "weight diff make, streamed"),
    ("recover", "weight diff recover, streamed"),
]


def bench(layers: int, args: argparse.Namespace, ops: list[tuple[str, str]]) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        root = Path(tmp)
        info = build_family(root, layers, args.hidden, args.vocab, args.shard)
        print(
            f"\n{layers} layers: model {info['model_mb']:.0f} MiB fp32 in {info['shards']} shards of <= "
            f"{info['shard_mb']:.0f} MiB; largest tensor {info['largest_tensor_mb']:.0f} MiB; median of {args.repeats}"
        )
        print(
            f"{'operation':<32}{'peak anon MiB':>14}{'peak RSS MiB':>14}{'x shard':>9}{'x model':>9}{'s':>7}"
        )
        results = {}
        for op, label in ops:
            runs = []
            for _ in range(args.repeats):
                cmd = [sys.executable, "-c", CHILD, op, str(root), args.shard]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{op} failed:\n{proc.stderr[-3000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = {k: statistics.median(x[k] for x in runs) for k in ("anon", "hwm", "s")}
            r["peak"] = max(r["anon"], r["hwm"]) if op.startswith("naive") else r["anon"]
            results[op] = r
            print(
                f"{label:<32}{r['anon']:>14.0f}{r['hwm']:>14.0f}{r['peak'] / info['shard_mb']:>9.1f}"
                f"{r['peak'] / info['model_mb']:>9.2f}{r['s']:>7.1f}"
            )
    return info, results


def main() -> None:
    ap = add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=1)
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 16], help="model depths to compare")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--shard", default="20MB", help="shard size of inputs and outputs")
    args = ap.parse_args()
    ops = OPS
    if args.quick:
        args.layers = args.layers[:1]
        ops = [o for o in OPS if o[0] in ("naive_linear", "linear", "make_diff")]
    rows = []
    for layers in args.layers:
        info, res = bench(layers, args, ops)
        size = f"{layers} layers, {info['model_mb']:.0f} MiB model, {info['shard_mb']:.0f} MiB shards"
        naive = res["naive_linear"]["peak"]
        for op, label in ops:
            if op == "naive_linear":
                continue
            rows.append(row("merge memory", f"{label} vs whole models (naive)", res[op]["peak"], naive,
                            unit="peak MiB", note=f"{size}; {res[op]['peak'] / info['model_mb']:.2f}x model"))  # fmt: skip
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
