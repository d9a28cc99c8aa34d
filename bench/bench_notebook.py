"""Where a stage's time goes when `tulu-kit run` executes it as a notebook (not a test).

Times, on one clock (CPU seconds of this process and the children it waited for: the papermill kernel, the
fresh interpreters), median of ``--repeats``, alternating the order within each repeat:

- the quickstart stage as papermill runs it (``notebooks/00_quickstart.ipynb``, the same arguments as
  ``tulu_kit.run.execute_stage``) vs its ``run(cfg)`` called in a fresh interpreter: the notebook's overhead;
- the parts of that overhead: an empty notebook through papermill (kernel start, papermill, nbformat) vs an
  empty interpreter, and the import of each stage module in a fresh interpreter (what every notebook pays
  before it does any work), and of ``accelerate launch`` (paid again by a launched training stage).

    .venv/bin/python bench/bench_notebook.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, add_args, paired_ratios, row, write_rows  # noqa: E402

NOTEBOOK = REPO / "notebooks" / "00_quickstart.ipynb"
KERNEL = "python3"
# what each stage's notebook imports first (its module); the figure is the cost of a fresh interpreter's import
IMPORTS = {
    "tulu_kit.quickstart": "import pandas, tulu_kit.config, tulu_kit.quickstart",
    "tulu_kit.data.stage": "import pandas, tulu_kit.config, tulu_kit.data.stage",
    "tulu_kit.sft (+ trl)": "import pandas, tulu_kit.config, tulu_kit.sft, tulu_kit.trainers; tulu_kit.trainers.sft_trainer_class()",
    "tulu_kit.evals (gsm8k + model)": "import matplotlib.pyplot, pandas, tulu_kit.config, tulu_kit.evals.gsm8k, transformers",
    "accelerate launch (CLI)": "import accelerate.commands.launch",
}


def cpu_now() -> float:
    """CPU seconds of this process plus its waited-for children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of fn()."""
    c, w = cpu_now(), time.perf_counter()
    fn()
    return cpu_now() - c, time.perf_counter() - w


def env() -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}


def python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, env=env(), capture_output=True)


def papermill(notebook: Path, params: dict, tmp: Path) -> None:
    import papermill as pm

    pm.execute_notebook(str(notebook), str(tmp / f"out_{notebook.name}"), parameters=params,
                        kernel_name=KERNEL, cwd=str(notebook.parent), progress_bar=False)  # fmt: skip


def empty_notebook(tmp: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("pass", metadata={"tags": ["parameters"]})]
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    path = tmp / "empty.ipynb"
    nbformat.write(nb, path)
    return path


def paired(fns: dict, repeats: int) -> dict[str, list[tuple[float, float]]]:
    out = {k: [] for k in fns}
    for i in range(repeats):
        for name in list(fns) if i % 2 == 0 else list(fns)[::-1]:
            out[name].append(measure(fns[name]))
    return out


def main() -> None:
    p = add_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_nb_") as t:
        tmp = Path(t)
        direct = (
            "from tulu_kit.quickstart import QuickstartConfig, run; "
            f"run(QuickstartConfig(out_dir={str(tmp / 'direct')!r}))"
        )
        got = paired(
            {
                "papermill": lambda: papermill(NOTEBOOK, {"out_dir": str(tmp / "nb")}, tmp),
                "direct": lambda: python(direct),
            },
            a.repeats,
        )
        cpu = {k: [c for c, _ in v] for k, v in got.items()}
        wall = {k: [w for _, w in v] for k, v in got.items()}
        nb_c, d_c = statistics.median(cpu["papermill"]), statistics.median(cpu["direct"])
        print(f"quickstart stage, CPU s (wall s), median of {a.repeats}:")
        print(f"  papermill notebook   {nb_c:6.2f} ({statistics.median(wall['papermill']):6.2f})")
        print(f"  run() fresh process  {d_c:6.2f} ({statistics.median(wall['direct']):6.2f})")
        rows.append(row("notebooks", "quickstart stage: papermill notebook vs run() in a fresh python", nb_c, d_c,
                        unit="CPU s", ratios=paired_ratios(cpu["papermill"], cpu["direct"]), samples=cpu,
                        note=f"wall {statistics.median(wall['papermill']):.1f} vs {statistics.median(wall['direct']):.1f} s"))  # fmt: skip

        empty = empty_notebook(tmp)
        got = paired(
            {"kernel": lambda: papermill(empty, {}, tmp), "python": lambda: python("pass")}, a.repeats
        )
        cpu = {k: [c for c, _ in v] for k, v in got.items()}
        k_c, py_c = statistics.median(cpu["kernel"]), statistics.median(cpu["python"])
        print(f"  empty notebook (kernel start + papermill) {k_c:6.2f}; empty python {py_c:6.2f}")
        rows.append(row("notebooks", "empty notebook through papermill vs empty python (kernel start)", k_c, py_c,
                        unit="CPU s", ratios=paired_ratios(cpu["kernel"], cpu["python"]), samples=cpu,
                        note="paid once per stage: `make demo` runs one notebook per stage"))  # fmt: skip

        for name, code in IMPORTS.items():
            base = "import time; t = time.process_time(); {}; print('T', time.process_time() - t)"
            times = []
            for _ in range(a.repeats):
                out = subprocess.run([sys.executable, "-c", base.format(code)], env=env(), capture_output=True,
                                     text=True, check=True).stdout  # fmt: skip
                times.append(float(out.split("T")[-1]))
            t_med = statistics.median(times)
            print(f"  import {name:<28} {t_med:6.2f}")
            rows.append(row("imports", f"import {name} in a fresh python", t_med, unit="CPU s",
                            samples={"ours": times}, note="paid by each notebook that needs it"))  # fmt: skip
    write_rows(a.json, rows)
    if not a.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
