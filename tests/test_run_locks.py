"""Every command that writes a run folder holds its lock, as `tulu-kit run` does (tulu_kit/cli.py, issue 23)."""

from __future__ import annotations

import importlib

import pytest
import yaml

from tulu_kit import cli
from tulu_kit.config import config_class
from tulu_kit.run import lock_run_dir


@pytest.mark.parametrize("kind", list(cli.TRAINING_KINDS))
def test_a_training_command_refuses_a_folder_in_use(kind, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    cfg = tmp_path / "cfg.yaml"
    fields = {"model": str(tmp_path), "train_file": str(data), "out_dir": str(out)}
    if kind == "grpo":
        fields.update(max_length=64, max_completion_length=16)
    cfg.write_text(yaml.safe_dump(fields))
    ran = []
    module = importlib.import_module(config_class(kind).__module__)
    monkeypatch.setattr(module, "run", lambda c: ran.append(c.out_dir) or {"model_dir": str(out / "model")})
    with lock_run_dir(out):  # another command is writing there
        assert cli.main([kind, str(cfg)]) == 2
    assert ran == [] and "is in use by another tulu-kit run" in capsys.readouterr().err
    assert cli.main([kind, str(cfg)]) == 0 and ran == [str(out)]  # free again: the command runs


def test_eval_and_merge_refuse_a_folder_in_use(tmp_path, monkeypatch, capsys):
    import tulu_kit.evals as evals
    from tulu_kit import merge

    out = tmp_path / "eval"
    monkeypatch.setattr(evals, "evaluate", lambda name, **kw: {"ok": 1})
    with lock_run_dir(out):
        assert cli.main(["eval", "gsm8k", "--model", "m", "--out", str(out)]) == 2
    assert cli.main(["eval", "gsm8k", "--model", "m", "--out", str(out)]) == 0
    merged = tmp_path / "merged"
    monkeypatch.setattr(merge, "merge_models", lambda *a, **k: None)
    args = ["merge", "models", "a", "b", "--method", "linear", "--out", str(merged)]
    with lock_run_dir(tmp_path, tmp_path / ".merged.lock"):  # the merged model's folder is replaced whole
        assert cli.main(args) == 2
    assert "in use" in capsys.readouterr().err
    assert cli.main(args) == 0
    assert not merged.exists()  # the lock sits beside the model folder, never inside it
