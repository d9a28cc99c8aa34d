"""MATH: Minerva / \\boxed{} extraction, math-verify equivalence, gold MATH-500 solutions score >= 99%."""

from __future__ import annotations

import json

import pytest

from tulu_kit.evals import math as mathbench


@pytest.mark.parametrize(
    ("output", "answer"),
    [
        ("so x = 4.\nFinal Answer: The final answer is $4$. I hope it is correct.", "$4$"),
        ("Thus the area is $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
        ("nested $\\boxed{\\sqrt{\\frac{1}{2}}}$ then $\\boxed{7}$ last", "7"),  # the last box wins
        ("no answer at all", None),
    ],
)
def test_extract_answer(output, answer):
    assert mathbench.extract_answer(output) == answer


@pytest.mark.parametrize(
    ("pred", "gold", "same"),
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\dfrac{3}{4}", "\\frac34", True),
        ("$4$", "4", True),
        ("5 \\text{ cm}", "5", True),  # units
        ("1,000", "1000", True),  # thousands comma
        ("x = 3", "3", True),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("-\\frac{2}{3}", "\\frac{2}{3}", False),  # sign matters
        ("4", "5", False),
        (None, "5", False),
    ],
)
def test_equivalence(pred, gold, same):
    assert mathbench.is_equiv(pred, gold) is same


def test_gold_solutions_all_score_correct(shared_data):
    rows = [json.loads(line) for line in (shared_data / "math500" / "test.jsonl").read_text().splitlines()]
    scored = mathbench.score_predictions(
        [{"problem": r["problem"], "output": r["solution"]} for r in rows], str(shared_data)
    )
    # every one of the 500 gold solutions is graded correct (measured: 500/500 on the shared MATH-500 file)
    assert scored.metrics["counts"]["n"] == 500 and scored.metrics["counts"]["correct"] == 500
    assert scored.metrics["score"] == 1.0
    assert scored.metrics["counts"]["per_group"] == {
        "Algebra": 124, "Counting & Probability": 38, "Geometry": 41, "Intermediate Algebra": 97,
        "Number Theory": 62, "Prealgebra": 82, "Precalculus": 56,
    }  # fmt: skip
    assert scored.metrics["subscores"] == dict.fromkeys(scored.metrics["counts"]["per_group"], 1.0)


def test_prompt_is_the_minerva_4_shot_prompt():
    text, prefix = mathbench.build_prompt({"problem": "What is 1+1?"})
    assert text.count("Problem:\n") == 5 and text.count("I hope it is correct.") == 4 and prefix == ""
    assert text.endswith("\n\nProblem:\nWhat is 1+1?\n\nSolution:")


def test_run_on_demo_data(tiny_model, tmp_path):
    cfg = mathbench.MATHConfig(
        model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), max_new_tokens=6
    )
    metrics = mathbench.run(cfg)
    assert metrics["counts"]["n"] == 3 and set(metrics["subscores"]) == {
        "Algebra",
        "Counting & Probability",
        "Prealgebra",
    }


def test_a_row_without_a_gold_answer_is_named(tmp_path):
    (tmp_path / "math500").mkdir()
    (tmp_path / "math500" / "test.jsonl").write_text(
        json.dumps({"problem": "p", "solution": "no box"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"test.jsonl:1: no field 'answer'"):
        mathbench.load_examples(str(tmp_path))
