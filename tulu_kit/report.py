"""The report stage: one self-contained page for one or several runs (notebook 07).

It reads only what the other stages leave in a run folder (``run.json`` and each stage's ``.stage.json``, each
training stage's ``log_history.jsonl``, each stage's ``metrics.json``), so it works on any run, finished or not.
What it promises, so a reader is not misled:

* **like with like**: a published Tulu number stands beside a score only when the score is the same metric (e.g.
  HumanEval pass@10, not pass@1) on the real benchmark with the protocol's own subset size; scores on the shipped
  demo items are labelled "demo items" and never set beside a published number;
* **nothing dropped silently**: every eval stage that has no score (no judge or classifier configured, failed,
  not run) is listed with the reason;
* **stage times survive re-runs**: a stage a re-run skipped shows the time of the run that completed it;
* **several runs side by side** (``compare``), and within a run every evaluated model (SFT → DPO → RL → merge),
  with the change from one column to the next;
* ``report.html`` is styled with inline CSS and its figures are inline PNGs: it opens offline, as one file,
  with no script and no TeX to render.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tulu_kit.io import atomic_write_text, read_jsonl

# Published results, in percent, each with its metric (as this kit's metrics.json names it) and its settings.
# Tulu 2: arXiv 2311.10702 v2, Table 1 (MMLU 0-shot EM, GSM8K 8-shot CoT, BBH 3-shot CoT, TydiQA GP 1-shot F1,
# Codex-Eval pass@10, AlpacaEval 1 win %, ToxiGen % toxic, TruthfulQA % info+true).
# Tulu 3 8B: arXiv 2411.15124 v5, Table 6 (OLMES settings: MMLU 0-shot CoT, MATH 4-shot CoT "flex",
# HumanEval(+) pass@10, IFEval prompt-level loose, AlpacaEval 2 length-controlled, TruthfulQA MC2 6-shot).
PUBLISHED: dict[str, dict[str, tuple[float, str, str]]] = {
    "Tulu 2 7B": {
        "mmlu": (50.4, "accuracy", "0-shot"),
        "gsm8k": (34.0, "exact_match", "8-shot CoT, 200 examples"),
        "bbh": (48.5, "exact_match", "3-shot CoT, 40 per task"),
        "tydiqa": (46.4, "f1", "GoldP 1-shot, 100 per language"),
        "humaneval": (36.9, "pass@10", "pass@10, T 0.8"),
        "alpaca_eval": (73.9, "win_rate", "AlpacaEval 1 win rate"),
        "toxigen": (7.0, "toxic_fraction", "% toxic (lower is better)"),
        "truthfulqa_gen": (50.2, "pct_true_and_info", "% true and informative"),
    },
    "Tulu 2+DPO 7B": {
        "mmlu": (50.7, "accuracy", "0-shot"),
        "gsm8k": (34.5, "exact_match", "8-shot CoT, 200 examples"),
        "bbh": (45.5, "exact_match", "3-shot CoT, 40 per task"),
        "tydiqa": (44.5, "f1", "GoldP 1-shot, 100 per language"),
        "humaneval": (40.0, "pass@10", "pass@10, T 0.8"),
        "alpaca_eval": (85.1, "win_rate", "AlpacaEval 1 win rate"),
        "toxigen": (0.5, "toxic_fraction", "% toxic (lower is better)"),
    },
    "Tulu 3 8B SFT": {
        "mmlu": (65.9, "accuracy_cot", "0-shot CoT (OLMES); this kit scores MMLU without CoT"),
        "truthfulqa": (46.8, "mc2", "MC2, 6-shot"),
        "bbh": (69.7, "exact_match", "3-shot CoT"),
        "math": (31.5, "accuracy", "4-shot CoT, flex"),
        "gsm8k": (76.2, "exact_match", "8-shot CoT"),
        "humaneval": (86.2, "pass@10", "pass@10"),
        "humaneval_plus": (81.4, "pass@10", "pass@10"),
        "ifeval": (72.8, "prompt_level_loose_acc", "prompt-level loose"),
        "alpaca_eval": (12.4, "length_controlled_win_rate", "AlpacaEval 2 length-controlled"),
    },
    "Tulu 3 8B DPO": {
        "mmlu": (68.7, "accuracy_cot", "0-shot CoT (OLMES); this kit scores MMLU without CoT"),
        "truthfulqa": (56.1, "mc2", "MC2, 6-shot"),
        "bbh": (68.7, "exact_match", "3-shot CoT"),
        "math": (42.0, "accuracy", "4-shot CoT, flex"),
        "gsm8k": (84.3, "exact_match", "8-shot CoT"),
        "humaneval": (83.9, "pass@10", "pass@10"),
        "humaneval_plus": (78.6, "pass@10", "pass@10"),
        "ifeval": (81.1, "prompt_level_loose_acc", "prompt-level loose"),
        "alpaca_eval": (33.5, "length_controlled_win_rate", "AlpacaEval 2 length-controlled"),
    },
}
# OLMo 2 1B (allenai/OLMo-2-0425-1B-RLVR1 model card, Performance table: the SFT, DPO and final rows; the card does
# not restate its settings; read as Tulu 3's OLMES suite), the yardstick of recipes/one_gpu/. MMLU is left out: the card's
# setting is not stated and this kit scores MMLU without CoT.
_OLMO2_1B = {"SFT": (52.1, 13.2, 32.8, 50.5, 2.4, 42.1), "DPO": (59.0, 14.1, 33.0, 67.1, 9.5, 46.4),
             "": (68.3, 20.7, 35.0, 70.1, 9.1, 48.7)}  # fmt: skip
for _stage, (_gsm, _math, _bbh, _ifeval, _alpaca, _tqa) in _OLMO2_1B.items():
    PUBLISHED[f"OLMo 2 1B {_stage}".strip()] = {
        "gsm8k": (_gsm, "exact_match", "OLMo 2 1B card (read as OLMES: 8-shot CoT)"),
        "math": (_math, "accuracy", "OLMo 2 1B card (read as OLMES: 4-shot CoT, flex)"),
        "bbh": (_bbh, "exact_match", "OLMo 2 1B card (read as OLMES: 3-shot CoT)"),
        "ifeval": (_ifeval, "prompt_level_loose_acc", "OLMo 2 1B card (prompt-level loose)"),
        "alpaca_eval": (
            _alpaca,
            "length_controlled_win_rate",
            "OLMo 2 1B card (AlpacaEval 2 length-controlled)",
        ),
        "truthfulqa": (_tqa, "mc2", "OLMo 2 1B card (MC2, 6-shot)"),
    }


def _published_assets() -> dict[str, dict[str, tuple[float, str, str]]]:
    """``assets/published_scores.csv``: the per-stage published scores of OLMo 2 1B (SFT, DPO, Instruct) and
    Tulu 3 8B (SFT, DPO, final), one row each with its metric, settings and source."""
    import csv

    out: dict[str, dict[str, tuple[float, str, str]]] = {}
    with open(Path(__file__).parent / "assets" / "published_scores.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["reference"], {})[row["benchmark"]] = (
                float(row["value"]),
                row["metric"],
                row["settings"],
            )
    return out


for _ref, _rows in _published_assets().items():  # the table adds rows; the ones above stay as they are
    for _bench, _row in _rows.items():
        PUBLISHED.setdefault(_ref, {}).setdefault(_bench, _row)

# metrics.json scores are fractions in [0, 1], except these, which the benchmark already writes in percent
PERCENT_METRICS = {"win_rate", "length_controlled_win_rate", "pct_true_and_info", "pct_true", "pct_info"}
# the order models are trained in: the comparison's columns follow it
PIPELINE_ORDER = ["quickstart", "sft", "lora", "dpo", "reward", "ppo", "grpo", "merge"]
DEMO, FULL, SUBSET = "demo items", "benchmark", "benchmark subset"
DASH = "—"


@dataclass
class ReportConfig:
    out_dir: str = "../runs/lab/report"  # report.html, scores.csv and the plots go here
    run_dir: str = "../runs/lab"  # the run folder to report on
    reference: str = "Tulu 2 7B"  # a PUBLISHED row to set full-benchmark scores beside; empty for none
    compare: list[str] = field(default_factory=list)  # other run folders to set side by side with run_dir
    # the toy world's held-out benchmarks: every stage's model is scored on them and the per-stage table (base →
    # SFT → DPO → RL → merge) heads the report. "": the run's own (<run_dir>/data/toy_benchmarks, written by
    # notebook 01 and the quickstart's data stage) when it has them, else none
    toy_benchmarks: str = ""

    def __post_init__(self):
        if self.reference and self.reference not in PUBLISHED:
            raise ValueError(
                f"reference must be one of {', '.join(PUBLISHED)} or empty, got {self.reference!r}"
            )


# --------------------------------------------------------------------------------------------- reading a run
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_table(run_dir: Path) -> pd.DataFrame:
    """One row per stage of ``run.json``: kind, status, seconds, and where a time comes from; without run.json
    (notebooks run one by one) one row per stage folder found (:func:`stage_folders`).

    A stage that a re-run skipped has no time in this run's ``run.json``; its ``.stage.json`` marker keeps the
    time of the run that completed it, shown with the note "earlier run".
    """
    stages = _read_json(run_dir / "run.json").get("stages") or {}
    if not stages:
        return pd.DataFrame(stage_folders(run_dir), columns=["stage", "kind", "status", "seconds", "note"])
    rows = []
    for name, info in stages.items():
        seconds, note, status = info.get("seconds"), "", info.get("status", "")
        if seconds is None:
            marker = _read_json(run_dir / name / ".stage.json")
            if marker.get("status") == "completed" and marker.get("seconds") is not None:
                seconds, note = marker["seconds"], "earlier run"
        if status == "skipped" and seconds is not None:
            note = "earlier run"
        if status == "running" and info.get("kind") == "report":
            note = "this page"
        elif info.get("error"):
            note = str(info["error"])[:120]
        rows.append({"stage": name, "kind": info.get("kind", ""), "status": status, "seconds": seconds,
                     "note": note})  # fmt: skip
    return pd.DataFrame(rows, columns=["stage", "kind", "status", "seconds", "note"])


def _folder_kind(folder: Path) -> str | None:
    """The kind of stage that filled ``folder`` (its metrics.json says, else its name or what it holds), or None
    for a folder no stage writes (the report's own, ``toy_eval``, ``notebooks``)."""
    from tulu_kit.config import STAGE_OUTPUTS

    metrics = _read_json(folder / "metrics.json")
    if metrics.get("stage"):
        return str(metrics["stage"])
    if metrics.get("benchmark"):
        return f"eval_{metrics['benchmark']}"
    held = {p.name for p in folder.iterdir()}
    for kind, outputs in STAGE_OUTPUTS.items():  # what only one kind writes: the data's mixes, a reward model
        if held & (set(outputs) - {"model", "adapter"}):
            return kind
    if held & {"model", "adapter", "checkpoints", ".stage.json"} or metrics:
        return folder.name if folder.name in STAGE_OUTPUTS else ""
    return None


def stage_folders(run_dir: Path) -> list[dict]:
    """The stages a run folder holds when no run.json lists them (notebooks 00-09 and eval/ run one by one):
    one row per stage folder, in pipeline order then evals; "completed" where its outputs are there (a training
    stage's metrics.json), "incomplete" where a training stage left only checkpoints."""
    from tulu_kit.config import STAGE_OUTPUTS

    order = ["quickstart", "data", *PIPELINE_ORDER[1:]]
    rows = []
    for folder in sorted(p for p in run_dir.glob("*") if p.is_dir() and not p.name.startswith(".")):
        kind = _folder_kind(folder)
        if kind is None:
            continue
        metrics, marker = _read_json(folder / "metrics.json"), _read_json(folder / ".stage.json")
        trains = kind not in ("quickstart", "data") and not kind.startswith("eval_")
        outputs = STAGE_OUTPUTS.get(kind, ())
        done = bool(metrics) if trains else bool(metrics) or any((folder / o).exists() for o in outputs)
        seconds, note = marker.get("seconds"), ""
        if seconds is None and isinstance(metrics.get("train_runtime_s"), (int, float)):
            seconds, note = metrics["train_runtime_s"], "training time (metrics.json)"
        if not done:
            note = "no metrics.json: it did not finish; run its notebook again (resume=True continues)"
        rows.append({"stage": folder.name, "kind": kind, "status": "completed" if done else "incomplete",
                     "seconds": seconds, "note": note})  # fmt: skip
    rank = {kind: i for i, kind in enumerate(order)}
    return sorted(
        rows, key=lambda r: (r["kind"].startswith("eval_"), rank.get(r["kind"], len(order)), r["stage"])
    )


def _percent(metric: str, value) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return None
    return float(value) if metric in PERCENT_METRICS else 100.0 * float(value)


def _default_max_examples(benchmark: str, field: str = "max_examples"):
    """The protocol's own subset size (the CONFIG default; or another field's), or ``...`` when it cannot be told."""
    try:
        from tulu_kit.evals import get_benchmark

        return getattr(get_benchmark(benchmark).CONFIG(), field, None)
    except Exception:  # an unknown or broken benchmark module: the run is just not comparable
        return ...


def data_kind(metrics: dict) -> str:
    """``demo items``, ``benchmark`` (the protocol's own size) or ``benchmark subset`` (a smaller cap)."""
    config = metrics.get("config") or {}
    if metrics.get("demo_data") or str(config.get("data_dir")) == "demo":
        return DEMO
    if "config" not in metrics:  # scored with `tulu-kit score`: whatever the predictions covered
        return FULL
    # the protocol's own draw ("open-instruct" where it has one) at its own size, or all of it, is the benchmark
    own_subset = _default_max_examples(metrics["benchmark"], "subset") or ""
    limit = config.get("max_examples")  # None (all) is never a subset, even where the protocol caps the size
    if (config.get("subset", own_subset) or "") != own_subset or (
        limit is not None and limit != _default_max_examples(metrics["benchmark"])
    ):
        return SUBSET
    return FULL


def model_label(metrics: dict) -> str:
    """The stage that made the evaluated model (``.../dpo/model`` -> ``dpo``), else the model as given."""
    model = str(
        metrics.get("model_dir") or metrics.get("model") or (metrics.get("config") or {}).get("model") or ""
    )
    if not model:
        return "?"
    path = Path(model)
    if path.name == "model" and path.parent.name:
        return path.parent.name
    return path.name or model


def eval_results(run_dir: Path) -> list[dict]:
    """Every eval stage's ``metrics.json`` (those with a ``benchmark``), in stage-folder order. A score whose model
    folder holds other weights now than the ones it recorded (a stage trained again since) is shown as not scored,
    with why: it is not the score of the model its row would name."""
    out, now = [], {}
    for path in sorted(run_dir.glob("*/metrics.json")):
        metrics = _read_json(path)
        if "benchmark" in metrics:
            metrics = {**metrics, "stage": path.parent.name}
            changed = _weights_changed(metrics, now)
            if changed:
                metrics.update(score=None, stderr=None, message=changed)
            out.append(metrics)
    return out


def _weights_changed(metrics: dict, now: dict[str, str]) -> str:
    """Why a result is no longer its model's (the fingerprint it recorded is not its local folder's now), else ""."""
    from tulu_kit.evals.core import model_fingerprint

    model = (metrics.get("manifest") or {}).get("model") or {}
    recorded, folder = model.get("fingerprint"), model.get("resolved")
    if not (
        isinstance(recorded, str) and recorded.startswith("sha256:") and folder and Path(folder).is_dir()
    ):
        return ""
    if folder not in now:
        now[folder] = model_fingerprint(folder)
    if now[folder] == recorded:
        return ""
    return (
        f"{folder} holds other weights now ({now[folder]}) than it scored ({recorded}): run this eval again"
    )


def score_table(run_dir: Path) -> pd.DataFrame:
    """One row per scored eval: benchmark, metric, score and stderr in percent, n, which data, which model."""
    rows = []
    for m in eval_results(run_dir):
        score = _percent(m.get("metric", ""), m.get("score"))
        if score is None:
            continue
        stderr = _percent(m.get("metric", ""), m.get("stderr"))
        rows.append({"stage": m["stage"], "benchmark": m["benchmark"], "metric": m.get("metric", ""),
                     "score": score, "stderr": stderr if stderr is not None else 0.0,
                     "n": (m.get("counts") or {}).get("n"), "data": data_kind(m), "model": model_label(m)})  # fmt: skip
    columns = ["stage", "benchmark", "metric", "score", "stderr", "n", "data", "model"]
    return _by_pipeline(pd.DataFrame(rows, columns=columns))


def _by_pipeline(table: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by benchmark, then by the training order of the evaluated model (SFT before DPO ...)."""
    if table.empty:
        return table
    rank = table["model"].map(
        lambda s: PIPELINE_ORDER.index(s) if s in PIPELINE_ORDER else len(PIPELINE_ORDER)
    )
    table = table.assign(_rank=rank).sort_values(["benchmark", "_rank"], kind="stable")
    return table.drop(columns="_rank").reset_index(drop=True)


def not_scored(run_dir: Path) -> pd.DataFrame:
    """Eval stages without a score, and why: no judge / classifier configured, failed, interrupted, not run."""
    rows, seen = [], set()
    for m in eval_results(run_dir):
        seen.add(m["stage"])
        if _percent(m.get("metric", ""), m.get("score")) is None:
            reason = m.get("message") or "nothing scored (no judge or classifier configured)"
            rows.append({"stage": m["stage"], "benchmark": m["benchmark"], "reason": reason})
    stages = _read_json(run_dir / "run.json").get("stages") or {}
    for name, info in stages.items():
        kind = str(info.get("kind", ""))
        if kind.startswith("eval_") and name not in seen:
            status = info.get("status", "pending")
            reason = f"{status}: {info['error']}" if info.get("error") else f"no metrics.json ({status})"
            rows.append({"stage": name, "benchmark": kind.removeprefix("eval_"), "reason": reason})
    return pd.DataFrame(rows, columns=["stage", "benchmark", "reason"])


def published_table(run_dir: Path, reference: str) -> tuple[pd.DataFrame, list[str]]:
    """Scores beside ``reference``'s published numbers, like with like only; and why other rows are not there.

    A row appears when the benchmark ran on its real data at the protocol's own size and the eval recorded the
    published metric (its primary metric, or the same key among its extra numbers, e.g. HumanEval's pass@10).
    """
    columns = [
        "benchmark",
        "metric",
        "model",
        "score",
        "stderr",
        reference or "published",
        "within noise",
        "settings",
    ]
    if not reference:
        return pd.DataFrame(columns=columns), []
    rows, notes, elsewhere = [], [], {}
    for m in eval_results(run_dir):
        bench = m["benchmark"]
        if bench not in PUBLISHED[reference]:
            continue
        value, metric, settings = PUBLISHED[reference][bench]
        kind = data_kind(m)
        ours = m.get("score") if m.get("metric") == metric else m.get(metric)
        score = _percent(metric, ours)
        if kind != FULL:
            elsewhere.setdefault(kind, set()).add(bench)
        elif score is None:
            notes.append(f"{bench}: published as {metric} ({settings}); this run has {m.get('metric')}")
        else:
            se = _percent(metric, m.get("stderr") if m.get("metric") == metric else m.get(f"{metric}_stderr"))
            within = (
                None if se is None else abs(score - value) < 1.96 * se
            )  # the published number has no stderr
            rows.append({"benchmark": bench, "metric": metric, "model": model_label(m), "score": score,
                         "stderr": se, columns[5]: value, "within noise": within, "settings": settings})  # fmt: skip
    for kind, benches in elsewhere.items():
        notes.insert(
            0, f"run on {kind}, so not set beside the published numbers: {', '.join(sorted(benches))}"
        )
    return _by_pipeline(pd.DataFrame(rows, columns=columns)), notes


def run_status(run_dir: Path) -> str:
    """The run's status as the page should state it: the report is written while its own stage runs, so a run
    whose other stages all completed is "completed" (not "running"); a folder without run.json was filled by
    notebooks run one by one."""
    info = _read_json(run_dir / "run.json")
    if not info:
        return "notebooks run one by one (no run.json)"
    status = str(info.get("status", "unknown"))
    if status != "running":
        return status
    others = [s for s in (info.get("stages") or {}).values() if s.get("kind") != "report"]
    states = {str(s.get("status")) for s in others}
    if "failed" in states:
        return "failed"
    if "interrupted" in states:
        return "interrupted"
    if states <= {"completed", "skipped"}:
        return "completed"
    return "running"


def _tiny_model(name: str) -> bool:
    """Whether a judge / classifier is the kit's untrained demo model (a quickstart model, or a few-KB config)."""
    path = Path(str(name))
    config = _read_json(path / "config.json") if path.is_dir() else {}
    return path.parent.name == "quickstart" or 0 < int(config.get("hidden_size") or 0) <= 128


def judges_table(run_dir: Path) -> pd.DataFrame:
    """Who scored each judged benchmark (judge, classifier), flagged when it is the untrained demo model."""
    rows = []
    for m in eval_results(run_dir):
        if _percent(m.get("metric", ""), m.get("score")) is None:
            continue  # not scored: no judge was used (listed under "Not scored" with the reason)
        config = m.get("config") or {}
        found = {f"{role} judge": v for role, v in (m.get("judges") or {}).items()}
        for key in ("judge", "classifier", "judge_model"):
            value = m.get(key) or config.get(key)
            if value and value not in found.values():
                found[key.replace("_model", "")] = value
        for role, who in found.items():
            note = "the untrained demo model: this score means nothing" if _tiny_model(who) else ""
            rows.append({"stage": m["stage"], "benchmark": m["benchmark"], "role": role, "model": str(who),
                         "note": note})  # fmt: skip
    return pd.DataFrame(rows, columns=["stage", "benchmark", "role", "model", "note"])


def next_steps(report: dict) -> list[str]:
    """What to do next, read from what the run shows: real data, real judges, a real model, a finished run."""
    steps = []
    status = report["status"]
    if status in ("failed", "interrupted"):
        steps.append(f"The run is {status}: run the same `tulu-kit run` command again to continue (completed "
                     "stages are skipped); run.json names the stage.")  # fmt: skip
    scores = report["scores"]
    if not scores.empty and (scores["data"] == DEMO).any():
        steps.append("Real scores: `tulu-kit data prepare-eval` once, then run the evals without `data_dir: demo` "
                     "(the protocol's own sizes are the defaults; eval/README.md).")  # fmt: skip
    judges = report.get("judges")
    if judges is not None and not judges.empty and (judges["note"] != "").any():
        steps.append("Judged scores: give the judges and classifiers real models (eval/README.md names the "
                     "published ones); the untrained demo model was used here.")  # fmt: skip
    if not report["not_scored"].empty:
        steps.append("Not scored: see the reasons above; a judged benchmark needs its judge or classifier.")
    if (Path(report["run_dir"]) / "quickstart" / "model").is_dir():  # trained from the tiny demo model
        steps.append("A real model: `tulu-kit run recipes/one_gpu/qwen2.5_0.5b.yaml` (ungated, one 24-48 GB GPU) "
                     "or `recipes/one_gpu/olmo2_1b.yaml` (one 80 GB GPU, OLMo 2 1B's published recipe); "
                     "`--dry-run` first. README: From the demo to a real model.")  # fmt: skip
    if not steps:
        steps.append("Compare with another run: set `compare: [other run folders]` in the report stage.")
    return steps


NO_EVAL = "no eval stage ran: run eval/<benchmark>.ipynb or `tulu-kit eval`"


def why_empty(report: dict) -> dict[str, str]:
    """For every section, the one line the page and the notebook show in place of a table with nothing in it."""
    evals = not (report["scores"].empty and report["not_scored"].empty)
    reference = report["reference"]
    if not reference:
        published = 'no reference set (reference = "")'
    elif not evals:
        published = NO_EVAL
    elif report["published_notes"]:
        published = f"no score of this run is comparable with {reference}'s: the lines below say why"
    else:
        published = f"{reference} publishes none of the benchmarks this run scored ({', '.join(PUBLISHED[reference])})"
    return {
        "stages": f"no stage folder in {report['run_dir']}: run the notebooks from 00_quickstart on, in order, or "
        "`tulu-kit run RECIPE.yaml`",
        "toy_table": f"not scored on the toy world: {report['run_dir']} has no stage model yet, or no "
        "data/toy_benchmarks (notebook 01 and the data stage write them, with toy_benchmarks > 0; or set "
        "toy_benchmarks to such a folder)",
        "kinds_table": "no toy benchmark scored by kind of question: no toy benchmarks (see above)",
        "rl_table": "no RL stage (ppo, grpo) wrote a model in this run, or it has no toy benchmarks (see above)",
        "training": "no training stage finished (no <stage>/metrics.json with train_steps)",
        "curves": "no training stage logged its steps (<stage>/log_history.jsonl): run notebook 02_sft first",
        "scores": NO_EVAL if not evals else "no eval stage has a score: see Not scored",
        "not_scored": NO_EVAL if not evals else "every eval stage that ran has a score",
        "published": published,
        "comparison": "nothing to set side by side: "
        + ("no eval stage ran" if not evals else "no eval stage has a score"),
        "judges": "no judged benchmark was scored",
    }


SHOWN_WITH = {
    "toy_table": "toy_note",
    "kinds_table": "kinds_note",
    "published": "published_notes",
    "rl_table": "rl_note",
}  # under the section


def show(report: dict, key: str) -> None:
    """One section of the report in a notebook: its table (the training curves and the side-by-side scores as
    figures), or the one line of :func:`why_empty` saying why it has nothing to show, never an empty table."""
    from IPython.display import display

    from tulu_kit import plots

    value = report.get(key)
    if value is None or len(value) == 0:
        print(report["why_empty"][key])
        if key != "published":  # the published section's notes say why no score is comparable
            return
    elif key == "curves":
        plots.training_curves(value)
    elif key == "comparison":
        display(value.round(1))
        plots.score_bars(value[[c for c in value if not c.startswith("Δ")]])
    else:
        display(value)
    notes = report.get(SHOWN_WITH.get(key, "")) or []
    for note in [notes] if isinstance(notes, str) else notes:
        print(note)


def training_curves(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Each training stage's logged training steps (its ``log_history.jsonl``: the Trainer's log), by stage."""
    curves = {}
    for path in sorted(run_dir.glob("*/log_history.jsonl")):
        frame = pd.DataFrame([h for h in read_jsonl(path) if "loss" in h and "step" in h])
        if not frame.empty:
            curves[path.parent.name] = frame
    return curves


TRAINING_FIELDS = [
    "train_steps",
    "first_loss",
    "last_loss",
    "first_nll",
    "last_nll",
    "reward_first",
    "reward_last",
    "kl_last",
]  # fmt: skip  (the RL stages' names: tulu_kit.training.reward_summary)


def training_table(run_dir: Path) -> pd.DataFrame:
    """The numbers each training / merge stage wrote to its ``metrics.json`` (the stages without a benchmark)."""
    rows = []
    for path in sorted(run_dir.glob("*/metrics.json")):
        m = _read_json(path)
        if "benchmark" in m or not m:
            continue
        row = {"stage": path.parent.name, "kind": m.get("stage", "")}
        row.update({k: m[k] for k in TRAINING_FIELDS if isinstance(m.get(k), (int, float))})
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(run_dirs: list[Path]) -> pd.DataFrame:
    """Scores side by side: rows benchmark · metric, one column per (run, evaluated model), then the deltas.

    Columns follow the runs in the order given and, within a run, the training order (SFT → DPO → RL → merge);
    ``Δ B`` is column B minus the column before it. Only scores on the same kind of data share a row.
    """
    frames = []
    for run_dir in run_dirs:
        scores = score_table(run_dir)
        if scores.empty:
            continue
        prefix = f"{run_dir.name}/" if len(run_dirs) > 1 else ""
        scores = scores.assign(column=prefix + scores["model"], run=len(frames))
        frames.append(scores)
    if not frames:
        return pd.DataFrame()
    scores = pd.concat(frames, ignore_index=True)
    scores["metric"] = scores["metric"] + scores["data"].map(lambda d: " (demo items)" if d == DEMO else "")

    def order(col: str) -> tuple:
        run = scores.loc[scores["column"] == col, "run"].iloc[0]
        stage = col.rsplit("/", 1)[-1]
        return run, PIPELINE_ORDER.index(stage) if stage in PIPELINE_ORDER else len(PIPELINE_ORDER), stage

    columns = sorted(scores["column"].unique(), key=order)
    table = scores.pivot_table(
        index=["benchmark", "metric"], columns="column", values="score", aggfunc="last"
    )
    table = table[columns]
    errors = scores.pivot_table(
        index=["benchmark", "metric"], columns="column", values="stderr", aggfunc="last"
    ).reindex(index=table.index, columns=columns)
    for before, after in zip(columns, columns[1:]):
        table[f"Δ {after}"] = table[after] - table[before]
        # within noise: |Δ| below 1.96 standard errors of the difference (the two scores' stderrs combined)
        noise = 1.96 * (errors[after] ** 2 + errors[before] ** 2) ** 0.5
        table[f"Δ {after} within noise"] = (table[f"Δ {after}"].abs() < noise).where(
            table[f"Δ {after}"].notna()
        )
    table.columns.name = None
    return table


def setting_differences(run_dirs: list[Path]) -> pd.DataFrame:
    """For every benchmark scored more than once, the recorded settings (``manifest``: versions, chat template,
    decoding, batch size, data hash, examples) in which a score differs from the first one: two numbers are
    comparable only where this is empty."""
    from tulu_kit.results import manifest_diff

    by_benchmark: dict[str, list[tuple[str, dict]]] = {}
    for run_dir in run_dirs:
        prefix = f"{run_dir.name}/" if len(run_dirs) > 1 else ""
        for m in eval_results(run_dir):
            by_benchmark.setdefault(m["benchmark"], []).append((prefix + model_label(m), m))
    rows = []
    for benchmark, scored in by_benchmark.items():
        (first_label, first), rest = scored[0], scored[1:]
        for label, m in rest:
            for key, (a, b) in manifest_diff(first, m).items():
                rows.append({"benchmark": benchmark, "setting": key, "first": f"{first_label}: {a}",
                             "other": f"{label}: {b}"})  # fmt: skip
    return pd.DataFrame(rows, columns=["benchmark", "setting", "first", "other"])


# --------------------------------------------------------------------------------------------- HTML
CSS = """
body{font:14px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;background:#f6f7f9;
margin:0;padding:24px}
main{max-width:1100px;margin:0 auto;background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:24px 32px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;
padding-bottom:4px}.meta{color:#57606a;font-size:12px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;
text-align:left}th{background:#f3f4f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#fafbfc}.pos{color:#1a7f37}.neg{color:#cf222e}
.banner{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px;margin:12px 0}
.tag{display:inline-block;font-size:11px;padding:0 6px;border-radius:10px;background:#eef1f4;color:#57606a}
.tag.demo{background:#fff1c2;color:#7a5b00}.tag.ok{background:#dafbe1;color:#1a7f37}
.tag.bad{background:#ffebe9;color:#cf222e}.note{color:#57606a;font-size:12px}
.formula{font-family:"STIX Two Math","Cambria Math",Georgia,serif;font-size:15px;background:#f6f8fa;
padding:2px 8px;border-radius:4px}img{max-width:100%;border:1px solid #e5e7eb;border-radius:4px}
"""
HEADERS = {"seconds": "time"}
STATUS_TAG = {"completed": "ok", "skipped": "ok", "failed": "bad", "interrupted": "bad"}


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f'<td class="num">{DASH}</td>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = html.escape(str(value))
        if column == "data":
            text = f'<span class="tag{" demo" if value == DEMO else ""}">{text}</span>'
        elif column == "status":
            text = f'<span class="tag {STATUS_TAG.get(str(value), "")}">{text}</span>'
        return f"<td>{text}</td>"
    if column.startswith("Δ"):
        css = "pos" if value > 0 else "neg" if value < 0 else ""
        return f'<td class="num {css}">{value:+.1f}</td>'
    if column in ("n", "train_steps") or isinstance(value, int):
        return f'<td class="num">{int(value)}</td>'
    if column == "seconds":
        return f'<td class="num">{duration(value)}</td>'
    return (
        f'<td class="num">{value:.4g}</td>'
        if column in TRAINING_FIELDS
        else f'<td class="num">{value:.1f}</td>'
    )


def duration(seconds: float) -> str:
    """``4.1 s``, ``12 min 3 s``, ``11 h 27 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    return f"{minutes // 60} h {minutes % 60} min"


def html_table(frame: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as an HTML table: missing values as a dash, numbers right-aligned, tags for data/status."""
    if frame.empty:
        return '<p class="note">none</p>'
    frame = frame.reset_index() if index else frame
    head = "".join(f"<th>{html.escape(HEADERS.get(str(c), str(c)))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(_cell(str(c), v) for c, v in zip(frame.columns, row)) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _paragraph(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(report: dict, key: str) -> str:
    """A section's table, or the line saying why it has nothing to show."""
    frame = report[key]
    return _paragraph(report["why_empty"][key]) if frame.empty else html_table(frame)


def render_html(report: dict, images: dict[str, str]) -> str:
    """The whole page: one file, inline CSS and PNGs, no script, formulas in plain Unicode."""
    run_dir, scores = report["run_dir"], report["scores"]
    demo = not scores.empty and (scores["data"] == DEMO).any()
    parts = [f"<h1>Run report: {html.escape(Path(run_dir).name)}</h1>",
             f'<div class="meta">{html.escape(str(run_dir))} · status {html.escape(report["status"])} · '
             f"written {time.strftime('%Y-%m-%d %H:%M')}</div>"]  # fmt: skip
    if demo:
        parts.append(
            '<div class="banner"><b>Demo run.</b> Scores marked <span class="tag demo">demo items</span> come '
            "from a few hand-written items shipped with tulu-kit, not from the benchmarks: they only show that "
            "the pipeline runs, and are never set beside published numbers.</div>"
        )
    if report.get("toy_table") is not None and not report["toy_table"].empty:
        parts += [
            "<h2>Each stage on the toy world's held-out questions</h2>",
            html_table(report["toy_table"]),
        ]
        parts.append(_paragraph(report["toy_note"]))
    if report.get("kinds_table") is not None and not report["kinds_table"].empty:
        parts += ["<h3>By kind of question</h3>", html_table(report["kinds_table"])]
        parts += [_paragraph(line) for line in report["kinds_note"]]
    if report.get("rl_table") is not None and not report["rl_table"].empty:
        parts += ["<h2>The RL sanity check: accuracy on each RL stage's training prompts</h2>",
                  html_table(report["rl_table"]), _paragraph(report["rl_note"])]  # fmt: skip
    parts += ["<h2>Stages</h2>", _section(report, "stages")]
    if not report["training"].empty or "training" in images:
        parts.append("<h2>Training</h2>")
    if not report["training"].empty:
        parts.append(html_table(report["training"]))
    if "training" in images:
        parts.append(f'<img alt="training curves" src="data:image/png;base64,{images["training"]}">')
    parts += ["<h2>Benchmarks</h2>", _section(report, "scores")]
    parts.append(
        '<p class="note">Score and standard error in percent: <span class="formula">SE = s / √n</span>; '
        "with a handful of examples, a difference under 2 SE means nothing. <i>model</i>: the stage that "
        "made the evaluated model.</p>"
    )
    if "scores" in images:
        parts.append(f'<img alt="scores" src="data:image/png;base64,{images["scores"]}">')
    parts += ["<h2>Not scored</h2>", _section(report, "not_scored")]
    judges = report.get("judges")
    if judges is not None and not judges.empty:
        parts += ["<h2>Judges and classifiers</h2>", html_table(judges)]
    if report["reference"]:
        parts += [f"<h2>Beside the published {html.escape(report['reference'])}</h2>",
                  _section(report, "published")]  # fmt: skip
        parts += [_paragraph(n) for n in report["published_notes"]]
        parts.append(
            _paragraph("Source: tulu_kit/report.py PUBLISHED (paper, table and settings named there).")
        )
    comparison = report["comparison"]
    if not comparison.empty and len([c for c in comparison.columns if not c.startswith("Δ")]) > 1:
        parts += ["<h2>Side by side</h2>", html_table(comparison, index=True),
                  "<p>“Δ X within noise”: the difference is under 1.96 standard errors of the difference "
                  "(both scores' stderr combined), so these two scores do not tell the models apart.</p>"]  # fmt: skip
        parts.append(_paragraph("Δ: a column minus the one before it, in percentage points."))
        differences = report["settings"]
        if differences.empty:
            parts.append(_paragraph("Every score set side by side was made with the same recorded settings "
                                    "(library versions, chat template, decoding, batch size, data)."))  # fmt: skip
        else:
            parts.append(
                _paragraph("Settings that differ between scores set side by side (read a Δ with them):")
            )
            parts.append(html_table(differences))
    parts.append("<h2>Next steps</h2>")
    parts.append(
        "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in report.get("next_steps", [])) + "</ul>"
    )
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>tulu-kit report · {html.escape(Path(run_dir).name)}</title><style>{CSS}</style></head>"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


# --------------------------------------------------------------------------------------------- the stage
def build(cfg: ReportConfig) -> dict:
    """Every table of the report, read from the run folder(s); nothing is written but the toy world's scores
    (``<run_dir>/toy_eval``, and those of its other seeds scored by an older version of the kit) when
    there are toy benchmarks: ``toy_benchmarks``, else the run's own."""
    from tulu_kit import toy_eval

    run_dir = Path(cfg.run_dir)
    published, notes = published_table(run_dir, cfg.reference)
    toy = {}
    toy_dir = cfg.toy_benchmarks or toy_eval.own_benchmarks(run_dir)
    if toy_dir:
        toy_eval.evaluate_run(run_dir, toy_dir)
        toy_eval.rl_check(run_dir)
        got = toy_eval.seed_results(toy_eval.seed_runs(run_dir))
        if got:  # else no stage has written a model yet: no table of zero seeds
            toy = {
                "toy_table": got["table"],
                "toy_note": got["note"],
                "kinds_table": got["kinds"],
                "kinds_note": got["kinds_lines"],
                "rl_note": toy_eval.RL_NOTE,
                "rl_table": got["rl"],
            }
    report = {
        **toy,
        "run_dir": str(run_dir),
        "status": run_status(run_dir),
        "reference": cfg.reference,
        "stages": stage_table(run_dir),
        "training": training_table(run_dir),
        "curves": training_curves(run_dir),
        "scores": score_table(run_dir),
        "not_scored": not_scored(run_dir),
        "published": published,
        "published_notes": notes,
        "comparison": comparison_table([run_dir] + [Path(p) for p in cfg.compare]),
        "settings": setting_differences([run_dir] + [Path(p) for p in cfg.compare]),
        "judges": judges_table(run_dir),
    }
    report["next_steps"] = next_steps(report)
    report["why_empty"] = why_empty(report)
    return report


def run(cfg: ReportConfig) -> dict:
    """Write ``report.html`` (self-contained) and ``scores.csv`` atomically; return the tables and the path."""
    import matplotlib.pyplot as plt

    from tulu_kit import plots

    report = build(cfg)
    figures = {}
    if report["curves"]:
        figures["training"] = plots.training_curves(report["curves"])
    comparison = report["comparison"]
    if not comparison.empty:
        figures["scores"] = plots.score_bars(comparison[[c for c in comparison if not c.startswith("Δ")]])
    images = {name: plots.png_base64(fig) for name, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)
    out_dir = Path(cfg.out_dir)
    atomic_write_text(out_dir / "report.html", render_html(report, images))
    atomic_write_text(out_dir / "scores.csv", report["scores"].to_csv(index=False))
    return {**report, "report": str((out_dir / "report.html").resolve())}
