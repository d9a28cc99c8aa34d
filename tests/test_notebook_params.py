"""A misspelt papermill parameter fails in the notebook with a suggestion, as a misspelt recipe key does."""

from __future__ import annotations

import pytest

from tulu_kit.config import ConfigError, collect, injected_parameters
from tulu_kit.report import ReportConfig


def test_injected_parameters_are_read_from_the_input_history():
    history = [
        "",
        'out_dir = "a"  # parameters cell',
        '# Parameters\nrefrence = "Tulu 2 7B"\nrun_dir = "r"\n',
    ]
    assert injected_parameters({"In": history}) == ["refrence", "run_dir"]
    assert injected_parameters({}) == []  # outside IPython: nothing to check


def test_collect_rejects_an_injected_name_the_config_lacks():
    ns = {"In": ["", '# Parameters\nrefrence = ""\n'], "refrence": "", "run_dir": "r"}
    with pytest.raises(ConfigError, match=r"unknown key 'refrence' \(did you mean 'reference'\?\)"):
        collect(ReportConfig, ns)
    ns["In"] = ["", '# Parameters\nreference = ""\n']
    assert collect(ReportConfig, {**ns, "reference": ""}).run_dir == "r"


def test_misspelt_papermill_parameter_fails_the_notebook(tmp_path, run_notebook):
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError, match="did you mean 'run_dir'"):
        run_notebook("notebooks/07_report.ipynb", {"out_dir": str(tmp_path / "r"), "rundir": str(tmp_path)})
    assert not (tmp_path / "r" / "report.html").exists()
