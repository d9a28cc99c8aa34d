"""The report stage reads only the run folder: stage times, curves, scores like with like, what was not scored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tulu_kit.config import ConfigError, from_dict
from tulu_kit.io import atomic_write_json, write_jsonl
from tulu_kit.report import ReportConfig, run


def _eval(run_dir, stage, benchmark, metric, score, model, n=4, **config):
    metrics = {"benchmark": benchmark, "metric": metric, "score": score, "stderr": 0.1 if score else None,
               "counts": {"n": n}, "model": f"{run_dir}/{model}/model", "config": config}  # fmt: skip
    atomic_write_json(run_dir / stage / "metrics.json", metrics)
    return metrics


@pytest.fixture
def fake_run(tmp_path):
    """A re-run: sft skipped (its time only in its marker), evals on demo items and on the real benchmark."""
    run_dir = tmp_path / "run"
    stages = {
        "sft": {"kind": "sft", "status": "skipped"},
        "dpo": {"kind": "dpo", "status": "completed", "seconds": 7.25},
        "gsm_demo": {"kind": "eval_gsm8k", "status": "completed", "seconds": 1.0},
        "gsm_sft": {"kind": "eval_gsm8k", "status": "completed", "seconds": 1.0},
        "gsm_dpo": {"kind": "eval_gsm8k", "status": "completed", "seconds": 1.0},
        "code": {"kind": "eval_humaneval", "status": "completed", "seconds": 2.0},
        "alpaca": {"kind": "eval_alpaca_eval", "status": "completed", "seconds": 1.0},
        "bbh": {"kind": "eval_bbh", "status": "failed", "error": "MissingDataError: bbh/bbh missing"},
        "report": {"kind": "report", "status": "running"},
    }
    atomic_write_json(run_dir / "run.json", {"status": "running", "stages": stages})
    atomic_write_json(
        run_dir / "sft" / ".stage.json", {"status": "completed", "params_hash": "x", "seconds": 3.5}
    )
    write_jsonl(run_dir / "sft" / "log_history.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    atomic_write_json(run_dir / "sft" / "metrics.json", {"stage": "sft", "train_steps": 2, "last_loss": 1.5})
    _eval(run_dir, "gsm_demo", "gsm8k", "exact_match", 0.5, "dpo", n=2, data_dir="demo", max_examples=2)
    _eval(run_dir, "gsm_sft", "gsm8k", "exact_match", 0.25, "sft", n=200, data_dir="/d", max_examples=200)
    _eval(run_dir, "gsm_dpo", "gsm8k", "exact_match", 0.30, "dpo", n=200, data_dir="/d", max_examples=200)
    code = _eval(run_dir, "code", "humaneval", "pass@1", 0.2, "dpo", n=164, data_dir="/d", max_examples=None)
    atomic_write_json(run_dir / "code" / "metrics.json", {**code, "pass@10": 0.4})
    alpaca = _eval(
        run_dir, "alpaca", "alpaca_eval", "win_rate", None, "dpo", data_dir="/d", max_examples=None
    )
    atomic_write_json(run_dir / "alpaca" / "metrics.json", {**alpaca, "message": "no judge configured"})
    return run_dir


def test_report_compares_like_with_like(fake_run, tmp_path):
    out = tmp_path / "report"
    result = run(ReportConfig(out_dir=str(out), run_dir=str(fake_run), reference="Tulu 2 7B"))
    scores = result["scores"].set_index("stage")
    assert scores.loc["gsm_demo", "data"] == "demo items" and scores.loc["gsm_dpo", "data"] == "benchmark"
    assert scores.loc["gsm_dpo", "score"] == pytest.approx(30.0) and scores.loc["gsm_dpo", "model"] == "dpo"
    # published numbers only beside full-benchmark scores of the same metric: HumanEval's pass@10, not pass@1
    published = result["published"].set_index(["benchmark", "model"])
    assert set(published.index) == {("gsm8k", "sft"), ("gsm8k", "dpo"), ("humaneval", "dpo")}
    assert published.loc[("humaneval", "dpo"), "metric"] == "pass@10"
    assert published.loc[("humaneval", "dpo"), "score"] == pytest.approx(40.0)
    assert published.loc[("humaneval", "dpo"), "Tulu 2 7B"] == 36.9
    assert any(n.startswith("run on demo items") and "gsm8k" in n for n in result["published_notes"])
    # nothing dropped silently: the unjudged eval and the failed one are listed with their reason
    missing = result["not_scored"].set_index("stage")["reason"].to_dict()
    assert missing == {"alpaca": "no judge configured", "bbh": "failed: MissingDataError: bbh/bbh missing"}
    # the skipped stage keeps the time of the run that completed it; the report's own row says what it is
    stages = result["stages"].set_index("stage")
    assert stages.loc["sft", "seconds"] == 3.5 and stages.loc["sft", "note"] == "earlier run"
    assert stages.loc["report", "note"] == "this page"
    # SFT -> DPO side by side, with the change; demo scores on their own row
    comparison = result["comparison"]
    assert comparison.loc[("gsm8k", "exact_match"), "Δ dpo"] == pytest.approx(5.0)
    # 5 points apart with a 10-point stderr each: within noise (1.96 * sqrt(10² + 10²) = 27.7)
    assert comparison.loc[("gsm8k", "exact_match"), "Δ dpo within noise"] == True  # noqa: E712
    assert published.loc[("gsm8k", "sft"), "stderr"] == pytest.approx(10.0)
    assert published.loc[("gsm8k", "sft"), "within noise"] == (abs(25.0 - 34.5) < 19.6)
    assert ("gsm8k", "exact_match (demo items)") in comparison.index
    assert (out / "scores.csv").read_text().splitlines()[
        0
    ] == "stage,benchmark,metric,score,stderr,n,data,model"


def test_report_page_is_self_contained_and_has_no_nan(fake_run, tmp_path):
    out = tmp_path / "report"
    run(ReportConfig(out_dir=str(out), run_dir=str(fake_run), reference="Tulu 2 7B"))
    page = (out / "report.html").read_text()
    assert "<style>" in page and "Demo run." in page and "no judge configured" in page
    assert page.count("data:image/png;base64,") == 2
    assert not re.search(r"\bNaN\b|\bnan\b", page)
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # no external file, script or stylesheet
    assert "$" not in page and "\\frac" not in page and "√n" in page  # formulas rendered, not raw TeX


def test_report_sets_several_runs_side_by_side(fake_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(fake_run, other)
    _eval(other, "gsm_dpo", "gsm8k", "exact_match", 0.40, "dpo", n=200, data_dir="/d", max_examples=200)
    result = run(ReportConfig(out_dir=str(tmp_path / "r"), run_dir=str(fake_run), compare=[str(other)]))
    row = result["comparison"].loc[("gsm8k", "exact_match")]
    assert row["run/dpo"] == pytest.approx(30.0) and row["other/dpo"] == pytest.approx(40.0)
    assert row["Δ other/dpo"] == pytest.approx(40.0 - 25.0)  # minus the column before it: other/sft


def test_unknown_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="reference must be one of"):
        from_dict(ReportConfig, {"reference": "Tulu 9"}, "r.yaml")


def test_side_by_side_scores_list_the_settings_they_differ_in(tmp_path):
    from tulu_kit.report import setting_differences
    from tulu_kit.results import write_result

    def eval_stage(run, stage, temperature):
        write_result(tmp_path / run / stage, "eval_gsm8k", model_dir=str(tmp_path / run / "sft" / "model"),
                     benchmark="gsm8k", metric="exact_match", score=0.5, stderr=0.1, counts={"n": 4},
                     manifest={"decoding": {"temperature": temperature}, "n_examples": 4})  # fmt: skip

    eval_stage("a", "eval_gsm8k", 0.0)
    eval_stage("b", "eval_gsm8k", 0.7)
    same = setting_differences([tmp_path / "a", tmp_path / "a"])
    assert same.empty  # a run against itself: comparable
    diff = setting_differences([tmp_path / "a", tmp_path / "b"])
    assert diff["setting"].tolist() == ["decoding.temperature"]
    assert diff.iloc[0]["first"].endswith(": 0.0") and diff.iloc[0]["other"].endswith(": 0.7")


def test_open_instructs_own_sample_is_the_benchmark_and_the_nested_draw_a_subset():
    from tulu_kit.report import FULL, SUBSET, data_kind

    def kind(**config):
        return data_kind({"benchmark": "gsm8k", "config": {"data_dir": "/d", "max_examples": 200, **config}})

    assert kind(subset="open-instruct") == FULL  # the default: open-instruct's 200 ids
    assert kind(subset="") == SUBSET  # the kit's nested draw: other questions, not comparable to Tulu's


def test_report_frame_final_status_judges_and_next_steps(fake_run, tmp_path):
    from tulu_kit.report import run_status

    assert run_status(fake_run) == "failed"  # bbh failed; the report's own "running" stage does not count
    run_json = fake_run / "run.json"
    import json

    info = json.loads(run_json.read_text())
    del info["stages"]["bbh"]
    atomic_write_json(run_json, info)
    assert run_status(fake_run) == "completed"  # written while its own stage runs, it states the end
    assert run_status(tmp_path / "notebooks_only").startswith("notebooks run one by one")
    # a judged benchmark scored by the untrained demo model is named and flagged
    tiny = fake_run / "quickstart" / "model"
    atomic_write_json(tiny / "config.json", {"model_type": "llama", "hidden_size": 64})
    tq = _eval(fake_run, "tq", "truthfulqa_gen", "pct_true_and_info", 0.0, "dpo", data_dir="demo")
    atomic_write_json(
        fake_run / "tq" / "metrics.json", {**tq, "judges": {"truth": str(tiny), "info": "x/judge"}}
    )
    alpaca = json.loads((fake_run / "alpaca" / "metrics.json").read_text())
    atomic_write_json(fake_run / "alpaca" / "metrics.json", {**alpaca, "config": {"judge_model": "gpt-4"}})
    out = tmp_path / "report"
    result = run(ReportConfig(out_dir=str(out), run_dir=str(fake_run), reference=""))
    assert "alpaca" not in set(result["judges"]["stage"])  # configured but unscored: no judge was used
    judges = result["judges"].set_index("role")
    assert judges.loc["truth judge", "note"].startswith("the untrained demo model")
    assert judges.loc["info judge", "note"] == ""
    steps = " ".join(result["next_steps"])
    assert "prepare-eval" in steps and "recipes/one_gpu/" in steps and "judges" in steps
    page = (out / "report.html").read_text()
    assert "status completed" in page and "<h2>Next steps</h2>" in page and "Judges and classifiers" in page


def test_olmo2_1b_rows_match_the_published_stage_scores(shared_data):
    import csv

    from tulu_kit.report import PUBLISHED

    path = shared_data.parent / "reference" / "published-stage-scores.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    names = {"GSM8K": "gsm8k", "MATH": "math", "BBH": "bbh", "IFEval": "ifeval", "AlpacaEval 2 LC": "alpaca_eval",
             "TruthQA": "truthfulqa"}  # fmt: skip
    stages = {"SFT": "OLMo 2 1B SFT", "DPO": "OLMo 2 1B DPO", "RLVR (final)": "OLMo 2 1B"}
    checked = 0
    for row in csv.DictReader(path.open()):
        if row["model"] == "OLMo 2 1B" and row["benchmark"] in names:
            assert PUBLISHED[stages[row["stage"]]][names[row["benchmark"]]][0] == float(row["value"]), row
            checked += 1
    assert checked == 18


def test_notebook_path_report_shows_the_stage_folders_and_no_empty_table(tmp_path, run_notebook):
    """Notebooks 00-03 run one by one into a run folder leave no run.json: the report's stages are the stage
    folders found there (in pipeline order; an interrupted one "incomplete"), and each section with nothing to
    show says why in one line, in the notebook and on the page, instead of an empty table."""
    from tulu_kit.report import build

    run_dir = tmp_path / "lab"
    atomic_write_json(run_dir / "quickstart" / "model" / "config.json", {"hidden_size": 64})
    atomic_write_json(run_dir / "quickstart" / "summary.json", {"parameters": 1})
    write_jsonl(run_dir / "data" / "sft.jsonl", [{"messages": []}])
    atomic_write_json(run_dir / "data" / "report.json", {"n": 1})
    atomic_write_json(run_dir / "sft" / "model" / "config.json", {"hidden_size": 64})
    write_jsonl(run_dir / "sft" / "log_history.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    atomic_write_json(run_dir / "sft" / "metrics.json", {"stage": "sft", "train_steps": 2, "last_loss": 1.5,
                                                          "train_runtime_s": 12.5})  # fmt: skip
    atomic_write_json(run_dir / "lora" / "checkpoints" / "checkpoint-1" / "trainer_state.json", {})  # stopped
    atomic_write_json(run_dir / "report" / "scores.csv", {})  # an earlier report: no stage
    atomic_write_json(run_dir / "toy_eval" / "sft" / "gsm8k" / "metrics.json", {"benchmark": "gsm8k"})

    report = build(ReportConfig(out_dir=str(run_dir / "report"), run_dir=str(run_dir)))
    stages = report["stages"].set_index("stage")
    assert list(stages.index) == ["quickstart", "data", "sft", "lora"]
    assert list(stages["kind"]) == ["quickstart", "data", "sft", "lora"]
    assert list(stages["status"]) == ["completed", "completed", "completed", "incomplete"]
    assert stages.loc["sft", "seconds"] == 12.5 and "did not finish" in stages.loc["lora", "note"]
    assert report["why_empty"]["scores"].startswith("no eval stage ran: run eval/<benchmark>.ipynb")

    nb = run_notebook(
        "notebooks/07_report.ipynb", {"out_dir": str(run_dir / "report"), "run_dir": str(run_dir)}
    )
    shown = [
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    ]
    text = "\n".join(shown)
    assert "Empty DataFrame" not in text and "Stages: none" not in text
    assert "lora" in text and "incomplete" in text  # the stage table, displayed
    assert text.count("no eval stage ran") == 4  # scores, not scored, published, side by side: one line each
    assert "not scored on the toy world" in text
    assert any(
        o.get("data", {}).get("image/png") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    page = (run_dir / "report" / "report.html").read_text()
    assert "no eval stage ran" in page and '<p class="note">none</p>' not in page
    assert "notebooks run one by one" in page

    # an eval notebook's folder joins the stages, after the training stages; its score fills the sections
    metrics = _eval(run_dir, "eval_gsm8k", "gsm8k", "exact_match", 0.5, "sft", n=2, data_dir="demo")
    atomic_write_json(run_dir / "eval_gsm8k" / "metrics.json", {**metrics, "stage": "eval_gsm8k"})
    report = build(ReportConfig(out_dir=str(run_dir / "report"), run_dir=str(run_dir)))
    assert list(report["stages"]["stage"]) == ["quickstart", "data", "sft", "lora", "eval_gsm8k"]
    assert report["stages"]["kind"].iloc[-1] == "eval_gsm8k" and len(report["scores"]) == 1
    assert report["why_empty"]["not_scored"] == "every eval stage that ran has a score"
    assert "comparable with Tulu 2 7B" in report["why_empty"]["published"]  # demo items: the note says so


def test_a_score_whose_model_was_trained_again_is_shown_as_not_scored(tiny_model, tmp_path):
    """An eval of ppo/model, then PPO trained again (other weights in the same folder): the Benchmarks table must
    not name the new policy with the old policy's score."""
    import shutil

    from tulu_kit.evals.core import model_fingerprint
    from tulu_kit.report import not_scored, score_table

    run_dir = tmp_path / "run"
    model = Path(shutil.copytree(tiny_model, run_dir / "ppo" / "model"))
    metrics = _eval(run_dir, "eval_gsm8k", "gsm8k", "exact_match", 0.5, "ppo")
    metrics["manifest"] = {"model": {"resolved": str(model), "fingerprint": model_fingerprint(str(model))}}
    atomic_write_json(run_dir / "eval_gsm8k" / "metrics.json", metrics)
    assert list(score_table(run_dir)["score"]) == [50.0] and not_scored(run_dir).empty
    (model / "model.safetensors").write_bytes(
        (model / "model.safetensors").read_bytes() + b"\0"
    )  # trained again
    assert score_table(run_dir).empty
    (reason,) = not_scored(run_dir)["reason"]
    assert "holds other weights now" in reason and "run this eval again" in reason
