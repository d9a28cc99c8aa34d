"""The report stage reads only the run folder: stage table, training curves, scores beside published ones."""

from __future__ import annotations

import pytest

from tulu_kit.config import ConfigError, from_dict
from tulu_kit.io import atomic_write_json, write_jsonl
from tulu_kit.report import ReportConfig, run


@pytest.fixture
def fake_run(tmp_path):
    run_dir = tmp_path / "run"
    stages = {"sft": {"kind": "sft", "status": "completed", "seconds": 3.5}, "gsm": {"kind": "eval_gsm8k"}}
    atomic_write_json(run_dir / "run.json", {"status": "completed", "stages": stages})
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "train_runtime": 1.0}]
    write_jsonl(run_dir / "sft" / "log_history.jsonl", history)
    gsm = {"benchmark": "gsm8k", "metric": "exact_match", "score": 0.25, "stderr": 0.1, "counts": {"n": 4}}
    atomic_write_json(run_dir / "gsm" / "metrics.json", gsm)
    atomic_write_json(run_dir / "other" / "metrics.json", {"not": "an eval"})
    return run_dir


def test_report_gathers_scores_curves_and_reference(fake_run, tmp_path):
    out = tmp_path / "report"
    result = run(ReportConfig(out_dir=str(out), run_dir=str(fake_run), reference="Tulu 2 7B"))
    scores = result["scores"]
    assert scores.to_dict("records") == [
        {
            "stage": "gsm",
            "benchmark": "gsm8k",
            "metric": "exact_match",
            "score": 25.0,
            "stderr": 10.0,
            "n": 4,
            "Tulu 2 7B": 34.0,
        }
    ]
    assert result["curves"]["sft"]["loss"].tolist() == [2.0, 1.5]
    assert result["stages"].set_index("stage").loc["sft", "seconds"] == 3.5
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "gsm8k" in page
    assert (out / "scores.csv").read_text().splitlines() == [
        "stage,benchmark,metric,score,stderr,n,Tulu 2 7B",
        "gsm,gsm8k,exact_match,25.0,10.0,4,34.0",
    ]


def test_unknown_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="reference must be one of"):
        from_dict(ReportConfig, {"reference": "Tulu 9"}, "r.yaml")


def test_report_notebook_runs(fake_run, tmp_path, run_notebook):
    nb = run_notebook("notebooks/07_report.ipynb", {"out_dir": str(tmp_path / "r"), "run_dir": str(fake_run)})
    assert (tmp_path / "r" / "report.html").is_file()
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))
