"""Point by point, the command line answers a user's mistake with one line, or just works."""

from __future__ import annotations

import json
import urllib.error

import pytest

from tulu_kit.cli import main
from tulu_kit.config import apply_overrides, parse_value


def _fails(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tulu-kit: ") and "Traceback" not in err
    return err


def test_empty_override_is_the_empty_string():
    assert parse_value("") == "" and parse_value("null") is None
    raw = apply_overrides({"stages": {"sft": {"eval_file": "x"}}}, ["sft.eval_file="], "r.yaml")
    assert raw["stages"]["sft"]["eval_file"] == ""


def test_eval_model_paths_fail_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    err = _fails(capsys, ["eval", "gsm8k", "--model", "runs/x/sft", "--data-dir", "demo"])
    assert "model 'runs/x/sft': no such folder" in err


def test_ties_without_base_and_prepare_eval_offline(tmp_path, monkeypatch, capsys):
    err = _fails(capsys, ["merge", "models", "a", "b", "--method", "ties", "--out", str(tmp_path / "m")])
    assert "--method ties adds task vectors to a base model: give --base-model" in err

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    err = _fails(capsys, ["data", "prepare-eval", "--only", "gsm8k", "--data-dir", str(tmp_path / "d")])
    assert "could not download" in err and "name resolution" in err and "needs a network" in err


def test_format_typo_says_did_you_mean(tmp_path, capsys):
    err = _fails(capsys, ["data", "mix", "--sft", "alpca:x.json", "1.0", "--out", str(tmp_path / "o")])
    assert "unknown format 'alpca' (did you mean 'alpaca'?)" in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["score", "--help"], ['"task_id", "completion"', "--skip-unmatched", "ifeval"]),
        (["merge", "diff", "--help"], ["the fine-tuned model folder", "example: tulu-kit merge diff"]),
        (["merge", "recover", "--help"], ["the diff folder written by `merge diff`"]),
        (["data", "mix", "--help"], ["preference formats: ", "ultrafeedback", "synthetic_sft", "AMOUNT"]),
    ],
)
def test_help_lists_what_a_command_accepts(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and all(e in out for e in expected), out


def test_ifeval_official_responses_skip_and_count_the_unmatched_row(tmp_path, shared_data, capsys):
    pytest.importorskip("lm_eval")
    data = tmp_path / "data"
    (data / "ifeval").mkdir(parents=True)
    inputs = (shared_data / "ifeval" / "input_data.jsonl").read_text().splitlines()
    responses = (shared_data / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl").read_text()
    (data / "ifeval" / "input_data.jsonl").write_text("\n".join(inputs[:40]) + "\n")
    (data / "nltk_data").symlink_to(shared_data / "nltk_data")  # punkt_tab under --data-dir is found
    kept = [
        r
        for r in responses.splitlines()
        if json.loads(r)["prompt"] in {json.loads(i)["prompt"] for i in inputs[:40]}
    ]
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "\n".join(kept[:10] + [json.dumps({"prompt": "not an IFEval prompt", "response": "x"})]) + "\n"
    )
    err = _fails(capsys, ["score", "ifeval", "--predictions", str(preds), "--data-dir", str(data)])
    assert "p.jsonl: line 11: prompt" in err and "--skip-unmatched" in err
    args = ["score", "ifeval", "--predictions", str(preds), "--data-dir", str(data), "--skip-unmatched"]
    assert main(args) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert (
        metrics["counts"]["unmatched"] == 1
        and metrics["counts"]["n"] == 10
        and metrics["unmatched_rows"] == [11]
    )
    assert "Downloaded punkt_tab" not in captured.out + captured.err


def _parsers(parser, path=()):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_and_option_is_described_with_an_example(capsys):
    from tulu_kit.cli import build_parser

    for path, parser in _parsers(build_parser()):
        name = " ".join(path) or "tulu-kit"
        assert parser.description, f"{name}: no description"
        assert "example" in (parser.epilog or ""), f"{name}: no example"
        for action in parser._actions:
            if action.dest not in ("help", "command", "what", "data_command"):
                assert action.help, f"{name} {action.option_strings or action.dest}: no help"
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("tulu-kit ")


def test_benchmark_and_stage_typos_say_did_you_mean(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "gsm8", "--model", "m"])
    assert "unknown benchmark 'gsm8' (did you mean 'gsm8k'?)" in capsys.readouterr().err
    from tulu_kit.config import REPO_ROOT

    recipe = str(REPO_ROOT / "recipes" / "quickstart.yaml")
    err = _fails(capsys, ["run", recipe, "--set", "sfft.learning_rate=1", "--dry-run"])
    assert "has no stage 'sfft' (did you mean 'sft'?)" in err


def test_a_full_disk_and_a_failed_launch_end_in_their_cause(monkeypatch, capsys):
    import errno

    from tulu_kit import config, launch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/scratch/run/sft/model.safetensors")

    monkeypatch.setattr(config, "load_recipe", full)
    assert main(["run", "r.yaml"]) == 1
    assert capsys.readouterr().err.strip() == (
        "tulu-kit: error: disk full writing /scratch/run/sft/model.safetensors: free space there"
    )

    def failed(*args, **kwargs):
        raise launch.LaunchError(
            "FileNotFoundError: data/sft.jsonl: no such file\n(the training command ...)"
        )

    monkeypatch.setattr(config, "load_recipe", failed)
    assert main(["run", "r.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tulu-kit: error: FileNotFoundError: data/sft.jsonl") and "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("p.jsonl.gz", b"\x1f\x8b\x08\x00 not gzip", r"p\.jsonl\.gz: not a readable gzip file"),
        ("p.jsonl", b'{"question": "a", "output": "\xff"}\n', r"p\.jsonl: line 1: not UTF-8"),
        (
            "p.jsonl",
            b"[" * 100_000 + b"]" * 100_000 + b"\n",
            r"p\.jsonl: line 1: (JSON nested too deeply|not)",
        ),
        ("p.jsonl", b'\n{"question": "nope", "output": "1"}\n', r"p\.jsonl: line 2: question 'nope'"),
    ],
)
def test_score_errors_are_one_line_naming_file_and_line(tmp_path, capsys, name, content, why):
    import re

    (tmp_path / name).write_bytes(content)
    err = _fails(capsys, ["score", "gsm8k", "--predictions", str(tmp_path / name), "--data-dir", "demo"])
    assert re.search(why, err) and len(err.splitlines()) == 1, err
