"""Every benchmark notebook in eval/ runs, cell by cell, on the shipped demo items and writes its metrics.

The cells are executed in this process, in order, in one namespace per notebook, with the values papermill would
inject after the parameters cell: the library and its model stack are imported once for all twenty notebooks,
where a kernel per notebook costs each ~10 CPU s of imports. Running a notebook under papermill and the runner
(parameters injected into a fresh kernel, outputs kept, a misspelt parameter refused) is tested on the demo's own
eval stages in test_pipeline.py, on gsm8k.ipynb with its defaults in test_eval_defaults.py and in
test_notebook_params.py.
"""

from __future__ import annotations

import json

import pytest

from tulu_kit.config import REPO_ROOT, load_recipe

NOTEBOOKS = sorted(p.stem for p in (REPO_ROOT / "eval").glob("*.ipynb"))


def _demo_parameters(name: str, model: str) -> dict:
    """The quickstart's parameters for this benchmark (its eval_<name> stage), or the same small budget for the
    benchmarks it does not run (Tulu 3's)."""
    stages = {s.name: s for s in load_recipe(REPO_ROOT / "recipes/quickstart.yaml", run_dir="/run").stages}
    stage = stages.get(f"eval_{name}")
    params = dict(stage.params) if stage else {"data_dir": "demo", "max_examples": 2, "max_new_tokens": 32}
    judges = {k: model for k in ("truth_judge", "info_judge") if k in params}
    return {**params, **judges, "model": model}


def exec_notebook(path, params: dict) -> dict:
    """Run the notebook's code cells in order in one fresh namespace, ``params`` assigned right after its
    parameters cell (papermill's injected cell); returns the namespace."""
    import matplotlib
    import matplotlib.pyplot as plt
    import nbformat

    matplotlib.use("Agg")
    nb = nbformat.read(path, as_version=4)
    namespace: dict = {"__name__": "__main__"}
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1, path
    try:
        for i, cell in enumerate(cells):
            exec(compile(cell.source, f"{path.name}, cell {i}", "exec"), namespace)
            if "parameters" in cell.metadata.get("tags", []):
                unknown = set(params) - set(namespace)
                assert not unknown, f"{path.name}'s parameters cell lacks {sorted(unknown)}"
                namespace.update(params)
    finally:
        plt.close("all")
    return namespace


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_eval_notebook_runs_on_the_demo_items(name, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT / "eval")  # as papermill runs it (cwd: the notebook's folder)
    out = tmp_path / f"eval_{name}"
    params = {**_demo_parameters(name, str(tiny_model)), "out_dir": str(out)}
    ns = exec_notebook(REPO_ROOT / "eval" / f"{name}.ipynb", params)
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN
    assert ns["cfg"].out_dir == str(out) and metrics["config"]["data_dir"] == "demo"
    assert metrics["model_dir"] == str(tiny_model)
    assert (out / "predictions.jsonl").is_file()
    if metrics["score"] is None:  # no judge or classifier offline: outputs saved, and it says why
        assert "not scored" in metrics["message"] or "no judge" in metrics["message"], metrics["message"]
    else:
        assert 0.0 <= metrics["score"] <= 1.0 and metrics["counts"]["n"] > 0
        assert ns["result"]["score"] == metrics["score"]
