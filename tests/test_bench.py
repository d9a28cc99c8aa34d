"""`make bench`'s runner: rows from each script, a failing script becomes a row, the table and the comparison."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def runner(tmp_path, monkeypatch):
    run_all = _load("run_all")
    fake = tmp_path / "bench"
    fake.mkdir()
    (fake / "_common.py").write_text((REPO / "bench" / "_common.py").read_text())
    (fake / "good.py").write_text(
        "import argparse, sys\n"
        "sys.path.insert(0, __file__.rsplit('/', 1)[0])\n"
        "from _common import add_args, row, write_rows, paired_ratios\n"
        "a = add_args(argparse.ArgumentParser()).parse_args()\n"
        "ours, base = [2.0, 3.0, 2.2][: a.repeats], [1.0, 2.0, 2.0][: a.repeats]\n"
        "write_rows(a.json, [row('g', 'step', 2.2, 2.0, ratios=paired_ratios(ours, base))])\n"
    )
    (fake / "bad.py").write_text("raise SystemExit('no model here')\n")
    monkeypatch.setattr(run_all, "BENCH", fake)
    return run_all


def test_rows_and_failed_script(runner, tmp_path):
    rows, _ = runner.run_script("good.py", 3, 60, tmp_path)
    assert len(rows) == 1
    # the median of the paired ratios 2.0, 1.5, 1.1 -- not 2.2 / 2.0 (the ratio of the medians)
    assert rows[0]["ratio"] == pytest.approx(1.5)
    bad, _ = runner.run_script("bad.py", 3, 60, tmp_path)
    assert bad[0]["metric"] == "(script failed)"
    assert "exit code 1" in bad[0]["note"] and "no model here" in bad[0]["note"]


def test_table_and_compare(runner, tmp_path):
    rows, _ = runner.run_script("good.py", 3, 60, tmp_path)
    result = {"date": "d", "repeats": 3, "seconds": 1.0, "machine": runner.machine(), "versions": {"torch": "x"},
              "rows": rows}  # fmt: skip
    text = runner.table(result)
    assert "versions: torch x" in text and "cores" in text
    line = next(x for x in text.splitlines() if x.startswith("g: step"))
    assert line.split()[2:5] == ["2.2", "2", "1.5"]
    old = tmp_path / "old.json"
    new = tmp_path / "new.json"
    old.write_text(json.dumps(result))
    new.write_text(json.dumps({**result, "rows": [{**rows[0], "ratio": 1.25}]}))
    last = runner.compare(str(old), str(new)).splitlines()[-1]
    assert last.split()[2:4] == ["1.5", "1.25"]


def test_rl_hook_joins_when_present(runner):
    assert "bench_rl.py" in runner.OPTIONAL and "bench_rl.py" not in runner.SCRIPTS
