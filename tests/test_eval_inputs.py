"""Prediction files and eval resume refuse what they cannot score faithfully (tulu_kit/evals/core.py)."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest

from tulu_kit.evals import core, gsm8k
from tulu_kit.evals.core import PredictionError, score_file


def _demo_rows(n: int = 2) -> list[dict]:
    return gsm8k.load_examples("demo")[:n]


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_duplicated_prediction_is_an_error_naming_file_and_line(tmp_path):
    ex = _demo_rows(2)
    right = {"question": ex[0]["question"], "output": f"The answer is {ex[0]['answer']}."}
    path = tmp_path / "p.jsonl"
    _write(path, [right, {"question": ex[1]["question"], "output": "0"}])
    assert score_file("gsm8k", path, data_dir="demo")["score"] == 0.5
    _write(path, [right, {"question": ex[1]["question"], "output": "0"}] + [right] * 48)
    with pytest.raises(PredictionError, match=r"p\.jsonl: line 3: predicts the same example as line 1"):
        score_file("gsm8k", path, data_dir="demo")


def test_code_benchmarks_may_repeat_a_task(tmp_path):
    path = tmp_path / "p.jsonl"
    _write(path, [{"task_id": "t/0", "completion": "pass"}] * 3)
    assert len(core.read_predictions(path, "humaneval")) == 3  # n samples per task: pass@k's protocol
    with pytest.raises(PredictionError, match="same example"):
        core.read_predictions(path, "gsm8k")


@pytest.mark.parametrize(("value", "got"), [(None, "null"), (["a"], "list"), ({"a": 1}, "dict"), (42, "int")])
def test_an_answer_that_is_not_text_names_file_line_and_field(tmp_path, value, got):
    ex = _demo_rows(1)[0]
    path = tmp_path / "p.jsonl"
    _write(path, [{"question": "x", "output": "1"}, {"question": ex["question"], "output": value}])
    with pytest.raises(PredictionError, match=rf"p\.jsonl: line 2: field 'output' must be text, got {got}"):
        score_file("gsm8k", path, data_dir="demo")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"question": "a", "output": "\xff"}\n', r"p\.jsonl: line 1: not UTF-8"),
        (b'{"question": "a"}\n[1, 2]\n', r"p\.jsonl: line 2: expected a JSON object, got list"),
        (b'{"question": "a", "output": "1"}\n{"question": \n', r"p\.jsonl: line 2: not valid JSON"),
        (
            b"[" * 100_000 + b"]" * 100_000 + b"\n",
            r"p\.jsonl: line 1: (JSON nested too deeply|not valid JSON)",
        ),
    ],
)
def test_unreadable_lines_name_file_and_line(tmp_path, content, why):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(PredictionError, match=why):
        score_file("gsm8k", path, data_dir="demo")


def test_bad_gzip_and_scorer_errors_name_the_file(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 this is not gzip")
    with pytest.raises(PredictionError, match=r"p\.jsonl\.gz: not a readable gzip file"):
        score_file("gsm8k", path, data_dir="demo")
    path.write_bytes(gzip.compress(json.dumps({"question": "nope", "output": "1"}).encode() + b"\n"))
    with pytest.raises(PredictionError, match=r"p\.jsonl\.gz: line 1: question 'nope'"):
        score_file("gsm8k", path, data_dir="demo")


def test_a_torn_multibyte_tail_does_not_block_resume(tmp_path):
    path = tmp_path / "predictions.jsonl"
    store = core.PredictionStore(path)
    store.append([{"id": "a", "output": "é"}])
    with open(path, "ab") as f:
        f.write('{"id": "b", "output": "日本'.encode()[:-1])  # killed inside a 3-byte character
    again = core.PredictionStore(path)
    assert list(again.records) == ["a"] and path.read_bytes().endswith(b"\n")
    again.append([{"id": "b", "output": "x"}])
    assert list(core.PredictionStore(path).records) == ["a", "b"]


def test_a_complete_last_line_without_newline_is_kept_and_not_glued(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b'{"id": "a", "output": "1"}')
    store = core.PredictionStore(path)
    store.append([{"id": "b", "output": "2"}])
    assert list(core.PredictionStore(path).records) == ["a", "b"]


def test_duplicate_ids_in_a_prediction_store_are_an_error(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a", "output": "1"}\n{"id": "a", "output": "2"}\n')
    with pytest.raises(ValueError, match=r"predictions\.jsonl:2: id 'a' already on line 1"):
        core.PredictionStore(path)


def test_resume_refuses_predictions_without_their_config(tmp_path):
    cfg = core.EvalConfig(out_dir=str(tmp_path), data_dir="demo")
    (tmp_path / "predictions.jsonl").write_text('{"id": "a", "output": "1"}\n')
    with pytest.raises(ValueError, match="eval_config.json does not"):
        core._check_resume(cfg, tmp_path)


def test_resume_refuses_another_data_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cfg = core.EvalConfig(out_dir=str(out), data_dir="demo")
    core._check_resume(cfg, out)
    (out / "predictions.jsonl").write_text('{"id": "a", "output": "1"}\n')
    core._check_resume(cfg, out)  # same data: resumes
    other = dataclasses.replace(cfg, data_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="data_root"):
        core._check_resume(other, out)


def test_decoding_text_says_what_a_run_used():
    from tulu_kit.evals.backends import GenParams

    assert core.decoding_text(GenParams(max_new_tokens=8)) == "greedy, 8 new tokens, no stop sequence"
    sampled = GenParams(max_new_tokens=512, temperature=0.8, top_p=0.95, stop=("\nclass", "```"))
    assert (
        core.decoding_text(sampled, n_samples=20)
        == "n=20 samples, temperature 0.8, top_p 0.95, 512 new tokens, stop '\\nclass' or '```'"
    )


def test_scorer_errors_name_the_file_line_not_the_record_number(tmp_path):
    ex = _demo_rows(1)[0]
    path = tmp_path / "p.jsonl"
    right = json.dumps({"question": ex["question"], "output": "1"})
    path.write_text(
        f"{right}\n\n\n" + json.dumps({"question": "nope", "output": "1"}) + "\n"
    )  # record 2, line 4
    with pytest.raises(PredictionError, match=r"p\.jsonl: line 4: question 'nope'"):
        score_file("gsm8k", path, data_dir="demo")
