"""BBH: "the answer is" extraction, case/punctuation-insensitive match, per-task prompts, mean over tasks."""

from __future__ import annotations

import pytest

from tulu_kit.evals import bbh


@pytest.mark.parametrize(
    ("output", "answer"),
    [
        ("Let's think step by step. A is True. So the answer is True.", "True"),
        ("... so the answer is (B).", "(B)"),
        ("The answer is 3.5. Done", "3.5"),  # a decimal point does not end the answer
        ("Step one.\nSo the answer is [ ] ).", "[ ] )"),
        ("valid\n\nQ: next question", "valid"),  # no marker: the first paragraph
    ],
)
def test_extract_answer(output, answer):
    assert bbh.extract_answer(output) == answer


def test_normalize_ignores_case_and_punctuation():
    assert bbh.normalize("(A)") == bbh.normalize("a") and bbh.normalize(" Yes. ") == "yes"


def test_gold_targets_score_100_percent_on_every_task(shared_data):
    names = bbh.tasks(str(shared_data))
    assert len(names) == 27
    preds = [
        {
            "id": e["id"],
            "task": t,
            "input": e["input"],
            "output": f"Let's think. So the answer is {e['target']}.",
        }
        for t in names
        for e in bbh.load_task(str(shared_data), t)
    ]
    scored = bbh.score_predictions(preds, str(shared_data))
    assert scored.metrics["counts"]["n"] == 6511 and scored.metrics["score"] == 1.0


def test_macro_average_over_tasks(shared_data):
    a = bbh.load_task(str(shared_data), "navigate")[:2]
    b = bbh.load_task(str(shared_data), "snarks")[:4]
    preds = [{"task": e["task"], "input": e["input"], "output": f"the answer is {e['target']}."} for e in a]
    preds += [{"task": e["task"], "input": e["input"], "output": "the answer is zzz."} for e in b[:3]]
    preds += [{"task": b[3]["task"], "input": b[3]["input"], "output": f"the answer is {b[3]['target']}."}]
    m = bbh.score_predictions(preds, str(shared_data)).metrics
    assert m["subscores"] == {"navigate": 1.0, "snarks": 0.25} and m["score"] == pytest.approx(0.625)


def test_prompt_and_n_shot(shared_data):
    full = bbh.task_prompt(str(shared_data), "boolean_expressions")
    assert (
        full.startswith("Evaluate the result of a random Boolean expression.") and full.count("\n\nQ: ") == 3
    )
    assert bbh.task_prompt(str(shared_data), "boolean_expressions", 1).count("Q: ") == 1
    text, prefix = bbh.build_prompt({"input": "True is"}, full, chat=False)
    assert text.endswith("\n\nQ: True is\n") and prefix == "A:"


def test_run_on_demo_data(tiny_model, tmp_path):
    metrics = bbh.run(
        bbh.BBHConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), max_new_tokens=8)
    )
    assert metrics["counts"]["per_group"] == {"boolean_expressions": 3}
