"""`make bench`: run every bench script, print one table of side-by-side figures, write it as JSON beside it.

Each script runs in its own process with ``--quick --repeats N --json PATH`` (see ``bench/_common.py``) and
returns rows that compare tulu-kit with a baseline on the same work; a script that fails or times out becomes a
row saying so, and the others still run. The table's header names the machine, the library versions and the
commit, so ``runs/bench/<time>_<commit>.json`` files from two commits can be compared:

    .venv/bin/python bench/run_all.py                      # what `make bench` runs
    .venv/bin/python bench/run_all.py --only train data    # scripts whose name contains a word
    .venv/bin/python bench/run_all.py --compare runs/bench/OLD.json runs/bench/latest.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

# The bench scripts, in the order they run; each takes --quick --repeats N --json PATH.
SCRIPTS = [
    "bench_data.py",  # data pipeline vs TRL's preparation; packing efficiency vs TRL's bfd
    "bench_train.py",  # sft, dpo, reward step time vs the bare TRL trainers
    "bench_generate.py",  # batched vs one-at-a-time generation
    "bench_notebook.py",  # a stage through papermill vs its run() called directly; where a stage's time goes
    "bench_merge_memory.py",  # peak memory of the streamed merge paths vs whole-model merging
    "bench_dpo_memory.py",  # DPO peak memory: cached reference log-probs vs a reference model
    "bench_sandbox.py",  # code execution: the out-of-process test oracle vs the same programs run in one process
    "gpu_bench.py",  # ~1B Llama on a GPU (skipped without one)
]
# Hook for the RL stages (GRPO vs bare TRL, PPO's generation/training split): bench_rl.py joins the table as
# soon as it exists, following the same contract (--quick --repeats N --json PATH).
OPTIONAL = ["bench_rl.py", "bench_grpo.py"]

VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "mergekit", "papermill",
             "flash-attn", "vllm", "tulu-kit")  # fmt: skip


# --------------------------------------------------------------------------- machine and versions


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")
            ),
            cpu,
        )
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    gpu = "none"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)  # fmt: skip
        gpu = "; ".join(x.strip() for x in out.stdout.splitlines() if x.strip()) or "none"
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "gpu": gpu,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
        "commit": commit + ("+dirty" if dirty else ""),
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- running the scripts


def run_script(name: str, repeats: int, timeout: int, log_dir: Path) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(BENCH / name), "--quick", "--repeats", str(repeats), "--json", str(out)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        start = time.perf_counter()
        log = log_dir / f"{Path(name).stem}.log"
        try:
            with log.open("w") as f:
                proc = subprocess.run(
                    cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, timeout=timeout
                )
            problem = f"exit code {proc.returncode}" if proc.returncode else ""
        except subprocess.TimeoutExpired:
            problem = f"timed out after {timeout} s"
        seconds = time.perf_counter() - start
        if not problem and out.is_file():
            return json.loads(out.read_text())["rows"], seconds
    tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
    problem = problem or "wrote no rows"
    note = f"FAILED ({problem}): {tail[0][:120] if tail else ''}; log: {log}"
    return [{"group": Path(name).stem, "metric": "(script failed)", "ours": None, "baseline": None, "ratio": None,
             "unit": "", "better": "", "note": note, "samples": {}}], seconds  # fmt: skip


# --------------------------------------------------------------------------- the table


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def table(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    lines = [
        f"tulu-kit bench  {result['date']}  commit {m['commit']}  ({result['repeats']} repeats, median; "
        f"{result['seconds']:.0f} s)",
        f"machine: {m['platform']}, {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, GPU: {m['gpu']}; "
        f"load average at start {m['load_average']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "ratio = tulu-kit / baseline (median of paired repeats where timed); 'better' says which way is good",
        "",
    ]
    head = ("metric", "tulu-kit", "baseline", "ratio", "unit", "better", "note")
    rows = [(f"{r['group']}: {r['metric']}", _num(r["ours"]), _num(r["baseline"]),
             _num(r["ratio"]), r["unit"], r["better"], r["note"]) for r in result["rows"]]  # fmt: skip
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head) - 1)]
    for x in [head, *rows]:
        cells = [x[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(x[1:-1], widths[1:])]
        lines.append("  ".join(cells) + "  " + x[-1])
        if x is head:
            lines.append("-" * (sum(widths) + 2 * len(widths) + 4))
    return "\n".join(lines)


def compare(old_path: str, new_path: str) -> str:
    old, new = (json.loads(Path(p).read_text()) for p in (old_path, new_path))
    before = {(r["group"], r["metric"]): r for r in old["rows"]}
    lines = [f"{old['machine']['commit']} ({old['date']}) -> {new['machine']['commit']} ({new['date']})", ""]
    lines.append(f"{'metric':<58}{'old ratio':>10}{'new ratio':>10}{'old ours':>11}{'new ours':>11}  unit")
    for r in new["rows"]:
        o = before.get((r["group"], r["metric"]), {})
        lines.append(f"{(r['group'] + ': ' + r['metric'])[:57]:<58}{_num(o.get('ratio')):>10}{_num(r['ratio']):>10}"
                     f"{_num(o.get('ours')):>11}{_num(r['ours']):>11}  {r['unit']}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (medians; at least 3)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench"), help="folder for the JSON, table and logs")
    p.add_argument("--only", nargs="+", help="run only the scripts whose name contains one of these words")
    p.add_argument("--timeout", type=int, default=420, help="seconds one script may take")
    p.add_argument(
        "--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two result JSON files and exit"
    )
    a = p.parse_args()
    if a.compare:
        print(compare(*a.compare))
        return 0
    scripts = SCRIPTS + [s for s in OPTIONAL if (BENCH / s).is_file()]
    if a.only:
        scripts = [s for s in scripts if any(w in s for w in a.only)]
    stamp = dt.datetime.now(dt.UTC)
    out = Path(a.out)
    info = machine()
    name = f"{stamp:%Y%m%d-%H%M%S}_{info['commit'].replace('+', '-')}"
    log_dir = out / name
    log_dir.mkdir(parents=True, exist_ok=True)
    result = {"date": f"{stamp:%Y-%m-%d %H:%M} UTC", "repeats": a.repeats, "machine": info, "versions": versions(),
              "scripts": {}, "rows": []}  # fmt: skip
    start = time.perf_counter()
    for script in scripts:
        print(f"[bench] {script} ...", flush=True)
        rows, seconds = run_script(script, a.repeats, a.timeout, log_dir)
        result["scripts"][script] = round(seconds, 1)
        result["rows"] += rows
        print(f"[bench] {script}: {len(rows)} rows in {seconds:.0f} s", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = table(result)
    print("\n" + text)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.txt").write_text(text + "\n")
    shutil.copyfile(out / f"{name}.json", out / "latest.json")
    shutil.copyfile(out / f"{name}.txt", out / "latest.txt")
    print(f"\nwritten: {out / name}.json (and .txt; logs in {log_dir}/); also {out}/latest.json")
    return 1 if any(r["metric"] == "(script failed)" for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
