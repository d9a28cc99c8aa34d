"""GSM8K: last-number extraction edge cases, gold answers score 100%, the end-to-end run on demo data."""

from __future__ import annotations

import json

import pytest

from tulu_kit.evals import gsm8k
from tulu_kit.evals.core import score_file


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("So the answer is 1,234.", "1234"),  # thousands comma, trailing period
        ("They paid $1,234,567 in total", "1234567"),
        ("The temperature is -5 degrees.", "-5"),  # negative, unit
        ("x = -3.25 so", "-3.25"),  # negative decimal
        ("It costs $18.50.", "18.50"),  # decimal, trailing period
        ("Half is .5", ".5"),
        ("For ages 3-4 the answer is 7 kids", "7"),
        ("ages 3-4", "4"),  # a range is not a negative number
        ("50% of them", "50"),
        ("no number here", None),
    ],
)
def test_extract_answer(text, number):
    assert gsm8k.extract_answer(text) == number


def test_numeric_match():
    assert gsm8k.is_correct("18.00", "18") and gsm8k.is_correct("-5", "-5")
    assert not gsm8k.is_correct("5", "-5") and not gsm8k.is_correct(None, "3")


def test_gold_answers_score_100_percent(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    preds = [{"question": r["question"], "output": r["answer"]} for r in rows]
    scored = gsm8k.score_predictions(preds, str(shared_data))
    assert scored.metrics["counts"] == {"n": 1319, "correct": 1319} and scored.metrics["score"] == 1.0
    assert [v["id"] for v in scored.verdicts[:3]] == ["0", "1", "2"]  # input order


def test_unknown_question_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "What is the meaning of life?", "output": "42"}) + "\n")
    with pytest.raises(ValueError, match="p.jsonl: line 1: question"):
        score_file("gsm8k", path, data_dir="demo")
    path.write_text(json.dumps({"prompt": "x", "output": "42"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl: line 1: needs one of the fields \['question'\]"):
        score_file("gsm8k", path, data_dir="demo")


def test_prompt_is_the_open_instruct_8_shot_prompt():
    text, prefix = gsm8k.build_prompt({"question": "How many? "})
    assert text.startswith("Answer the following questions.\n\nQuestion: There are 15 trees in the grove.")
    assert (
        text.count("Question: ") == 9 and text.endswith("\n\nQuestion: How many?\n") and prefix == "Answer:"
    )


def test_run_on_demo_data(tiny_model, tmp_path):
    cfg = gsm8k.GSM8KConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), max_new_tokens=6)
    metrics = gsm8k.run(cfg)
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(p["model_input"].endswith("\nAnswer:") for p in preds)
    assert (
        metrics["counts"]["n"] == 4
        and json.loads((tmp_path / "metrics.json").read_text())["score"] == metrics["score"]
    )
    rescored = score_file("gsm8k", tmp_path / "predictions.jsonl", data_dir="demo")
    assert (rescored["score"], rescored["counts"]) == (metrics["score"], metrics["counts"])  # two paths agree
    assert metrics["counts"]["correct"] == 0  # tiny model seed 0, greedy, 6 tokens: no right number
    # metrics.json records the decoding this run used, and keeps the protocol's own beside it
    assert metrics["protocol"]["decoding"].startswith("greedy, 6 new tokens, stop ")
    assert metrics["protocol"]["decoding_default"] == gsm8k.PROTOCOL["decoding"]


def test_a_bad_line_in_the_data_file_names_file_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"test.jsonl: line 2: not valid JSON"):
        gsm8k.load_examples(str(tmp_path))
