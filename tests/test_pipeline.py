"""The demo itself: `tulu-kit run recipes/quickstart.yaml` end to end, as `make demo` runs it.

Every stage's notebook is executed by papermill here with the quickstart's tiny parameters; the test then checks
what each stage left in the run folder, and that a second run skips everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tulu_kit.config import REPO_ROOT, load_recipe


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "tulu_kit.cli", "run", "recipes/quickstart.yaml", "--out", str(run_dir)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    return run_dir, result, cmd, env


def test_demo_completes_every_stage(demo_run):
    run_dir, result, _, _ = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    status = json.loads((run_dir / "run.json").read_text())
    recipe = load_recipe(REPO_ROOT / "recipes/quickstart.yaml", run_dir=run_dir)
    assert status["status"] == "completed"
    assert [s.name for s in recipe.stages] == list(status["stages"])
    for stage in recipe.stages:
        assert status["stages"][stage.name]["status"] == "completed"
        assert (run_dir / "notebooks" / stage.notebook.name).is_file()  # 04_dpo.ipynb, gsm8k.ipynb, ...
    assert (run_dir / "config.yaml").is_file()


def test_demo_eval_stages_write_metrics(demo_run):
    run_dir = demo_run[0]
    recipe = load_recipe(REPO_ROOT / "recipes/quickstart.yaml", run_dir=run_dir)
    evals = [s for s in recipe.stages if s.kind.startswith("eval_")]
    assert evals, "the quickstart runs the benchmarks"
    for stage in evals:
        metrics = json.loads((run_dir / stage.name / "metrics.json").read_text())  # strict JSON: no NaN
        if metrics["score"] is None:  # no judge or classifier offline: outputs saved, and it says why
            assert "not scored" in metrics["message"] or "no judge" in metrics["message"], stage.name
            assert (run_dir / stage.name / "predictions.jsonl").is_file()
        else:
            assert 0.0 <= metrics["score"] <= 1.0 and metrics["counts"]["n"] > 0, stage.name
    assert (run_dir / "report" / "report.html").is_file()


def test_demo_rerun_skips_completed_stages(demo_run):
    run_dir, _, cmd, env = demo_run
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    n_stages = len(load_recipe(REPO_ROOT / "recipes/quickstart.yaml", run_dir=run_dir).stages)
    assert "running" not in again.stdout and again.stdout.count("skipped") == n_stages
