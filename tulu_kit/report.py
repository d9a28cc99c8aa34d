"""The report stage: one page for a whole run — stage times, training curves, benchmark scores (notebook 07).

It reads only what the other stages leave in the run folder (``run.json``, each training stage's
``log_history.jsonl``, each eval stage's ``metrics.json``), so it works on any run, finished or not, and sets
the scores beside the published Tulu 2 / Tulu 3 numbers (``PUBLISHED``), labelled with their settings.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tulu_kit.io import atomic_write_text, read_jsonl

# Published results, in percent. Tulu 2: arXiv 2311.10702 v2, Table 1 (MMLU 0-shot EM, GSM8K 8-shot CoT, BBH
# 3-shot CoT, TydiQA GP 1-shot F1, Codex-Eval P@10, AlpacaEval 1 win %, ToxiGen % toxic, TruthfulQA % info+true).
# Tulu 3 8B: arXiv 2411.15124 v5, Table 6 (OLMES settings; not comparable with the Tulu 2 suite).
PUBLISHED: dict[str, dict[str, float]] = {
    "Tulu 2 7B": {
        "mmlu": 50.4,
        "gsm8k": 34.0,
        "bbh": 48.5,
        "tydiqa": 46.4,
        "humaneval": 36.9,
        "alpaca_eval": 73.9,
        "toxigen": 7.0,
        "truthfulqa_gen": 50.2,
    },
    "Tulu 2+DPO 7B": {
        "mmlu": 50.7,
        "gsm8k": 34.5,
        "bbh": 45.5,
        "tydiqa": 44.5,
        "humaneval": 40.0,
        "alpaca_eval": 85.1,
        "toxigen": 0.5,
    },
    "Tulu 3 8B SFT": {
        "mmlu": 65.9,
        "truthfulqa": 46.8,
        "bbh": 69.7,
        "math": 31.5,
        "gsm8k": 76.2,
        "humaneval": 86.2,
        "humaneval_plus": 81.4,
        "ifeval": 72.8,
        "alpaca_eval": 12.4,
    },
    "Tulu 3 8B DPO": {
        "mmlu": 68.7,
        "truthfulqa": 56.1,
        "bbh": 68.7,
        "math": 42.0,
        "gsm8k": 84.3,
        "humaneval": 83.9,
        "humaneval_plus": 78.6,
        "ifeval": 81.1,
        "alpaca_eval": 33.5,
    },
}


@dataclass
class ReportConfig:
    out_dir: str = "../runs/lab/report"  # report.html, scores.csv and the plots go here
    run_dir: str = "../runs/lab"  # the run folder to report on
    reference: str = "Tulu 2 7B"  # a PUBLISHED row to set the scores beside; empty for none

    def __post_init__(self):
        if self.reference and self.reference not in PUBLISHED:
            raise ValueError(
                f"reference must be one of {', '.join(PUBLISHED)} or empty, got {self.reference!r}"
            )


def stage_table(run_dir: Path) -> pd.DataFrame:
    """One row per stage from ``run.json``: kind, status, seconds."""
    path = run_dir / "run.json"
    if not path.is_file():
        return pd.DataFrame(columns=["stage", "kind", "status", "seconds"])
    stages = json.loads(path.read_text())["stages"]
    rows = [
        {"stage": name, **{k: info.get(k) for k in ("kind", "status", "seconds")}}
        for name, info in stages.items()
    ]
    return pd.DataFrame(rows)


def score_table(run_dir: Path) -> pd.DataFrame:
    """One row per eval stage's ``metrics.json``: benchmark, metric, score and stderr in percent, n."""
    rows = []
    for path in sorted(run_dir.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        if "benchmark" not in m or m.get("score") is None:  # not an eval, or saved without a judge
            continue
        rows.append(
            {
                "stage": path.parent.name,
                "benchmark": m["benchmark"],
                "metric": m.get("metric", ""),
                "score": 100 * m["score"],
                "stderr": 100 * (m.get("stderr") or 0.0),
                "n": (m.get("counts") or {}).get("n"),
            }
        )
    return pd.DataFrame(rows, columns=["stage", "benchmark", "metric", "score", "stderr", "n"])


def training_curves(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Each training stage's logged training steps (its ``log_history.jsonl``: the Trainer's log), by stage."""
    curves = {}
    for path in sorted(run_dir.glob("*/log_history.jsonl")):
        frame = pd.DataFrame([h for h in read_jsonl(path) if "loss" in h and "step" in h])
        if not frame.empty:
            curves[path.parent.name] = frame
    return curves


def with_reference(scores: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Add the published score of ``reference`` for each benchmark it reports."""
    if not reference or scores.empty:
        return scores
    published = PUBLISHED[reference]
    return scores.assign(**{reference: scores["benchmark"].map(published)})


def plot_curves(curves: dict[str, pd.DataFrame]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(4 * max(1, len(curves)), 3), squeeze=False)
    for ax, (stage, frame) in zip(axes[0], curves.items()):
        ax.plot(frame["step"], frame["loss"], marker=".")
        ax.set(title=stage, xlabel="step", ylabel="training loss")
    fig.tight_layout()
    return fig


def plot_scores(scores: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(scores)), 3))
    ax.bar(scores["benchmark"], scores["score"], yerr=scores["stderr"], capsize=3)
    ax.set(ylabel="score (%)", ylim=(0, 100), title="benchmarks")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def run(cfg: ReportConfig) -> dict:
    """Gather the run's tables and figures and write ``report.html`` and ``scores.csv`` atomically."""
    import matplotlib.pyplot as plt

    run_dir, out_dir = Path(cfg.run_dir), Path(cfg.out_dir)
    stages, curves = stage_table(run_dir), training_curves(run_dir)
    scores = with_reference(score_table(run_dir), cfg.reference)
    figures = {}
    if curves:
        figures["training"] = plot_curves(curves)
    if not scores.empty:
        figures["scores"] = plot_scores(scores)
    images = {name: _png(fig) for name, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)
    parts = [
        f"<h1>Run report: {html.escape(str(run_dir))}</h1>",
        "<h2>Stages</h2>",
        stages.to_html(index=False),
    ]
    parts += ["<h2>Benchmarks</h2>", scores.to_html(index=False, float_format="%.1f")]
    if cfg.reference:
        parts.append(
            f"<p>{html.escape(cfg.reference)}: published, see tulu_kit/report.py for the source.</p>"
        )
    parts += [f'<h2>{name}</h2><img src="data:image/png;base64,{data}">' for name, data in images.items()]
    atomic_write_text(out_dir / "report.html", "<html><body>" + "\n".join(parts) + "</body></html>\n")
    atomic_write_text(out_dir / "scores.csv", scores.to_csv(index=False))
    return {"stages": stages, "scores": scores, "curves": curves, "report": str(out_dir / "report.html")}
