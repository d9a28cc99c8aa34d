"""The eval notebooks chain with their defaults: a run or stage folder as the model, demo items without data."""

from __future__ import annotations

import json
import time

import pytest

from tulu_kit.evals import core


def _model(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')


def test_a_stage_folder_is_not_taken_for_a_model(tmp_path):
    _model(tmp_path / "sft" / "model")
    (tmp_path / "sft" / "config.json").write_text('{"learning_rate": 0.003}')  # the stage's own settings
    assert core.resolve_model(tmp_path / "sft") == str(tmp_path / "sft" / "model")
    time.sleep(0.01)
    _model(tmp_path / "dpo" / "model")  # no config.yaml (a JupyterLab run): the newest model wins
    assert core.resolve_model(tmp_path) == str(tmp_path / "dpo" / "model")


def test_a_missing_path_is_an_error_not_a_hub_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for missing in ("runs/x", "runs/x/sft", "./m", "../m"):
        with pytest.raises(FileNotFoundError, match=f"model '{missing}': no such folder"):
            core.resolve_model(missing)
    assert core.resolve_model("allenai/tulu-2-7b") == "allenai/tulu-2-7b"  # org/name: a Hub id
    assert core.resolve_model("gpt2") == "gpt2"


def test_demo_items_only_when_no_data_is_configured(tmp_path, monkeypatch, caplog):
    from tulu_kit.evals.gsm8k import GSM8KConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TULU_KIT_DATA", raising=False)
    with caplog.at_level("WARNING"):
        assert core.with_demo_data(GSM8KConfig()).data_dir == "demo"
    assert "DEMO ITEMS" in caplog.text
    assert core.with_demo_data(GSM8KConfig(data_dir="/d")).data_dir == "/d"
    monkeypatch.setenv("TULU_KIT_DATA", str(tmp_path / "data"))
    assert core.with_demo_data(GSM8KConfig()).data_dir is None  # configured: a missing file stays an error


def test_eval_notebook_runs_with_its_defaults_on_demo_items(tiny_model, tmp_path, monkeypatch, run_notebook):
    run_dir = tmp_path / "runs" / "lab"
    (run_dir / "dpo").mkdir(parents=True)
    (run_dir / "dpo" / "model").symlink_to(tiny_model)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TULU_KIT_DATA", raising=False)
    out = tmp_path / "eval_gsm8k"
    nb = run_notebook("eval/gsm8k.ipynb", {"model": str(run_dir), "out_dir": str(out), "max_new_tokens": 4})
    first = next(c for c in nb.cells if c.cell_type == "code" and "with_demo_data" in c.source)
    assert "DEMO ITEMS" in "".join(o.get("text", "") for o in first.outputs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["demo_data"] is True and metrics["config"]["data_dir"] == "demo"
    assert metrics["model"] == str(run_dir) and metrics["model_dir"] == str(run_dir / "dpo" / "model")
    assert (
        metrics["counts"]["n"]
        == len((core.data_root("demo") / "gsm8k" / "test.jsonl").read_text().split("\n")) - 1
    )
