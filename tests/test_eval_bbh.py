"""BBH: "the answer is" extraction, case/punctuation-insensitive match, per-task prompts, mean over tasks."""

from __future__ import annotations

import pytest

from tulu_kit.evals import bbh
from tulu_kit.evals.core import score_file


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
    assert bbh.normalize("a, b c", "word_sorting") == "a b c"


def test_punctuation_that_is_the_answer_is_kept():
    assert bbh.normalize("] ) }", "dyck_languages") == "])}" == bbh.normalize("])}", "dyck_languages")
    assert bbh.normalize("] ] >", "dyck_languages") != bbh.normalize("} } >", "dyck_languages")
    assert bbh.normalize("-12", "multistep_arithmetic_two") != bbh.normalize("12", "multistep_arithmetic_two")
    assert bbh.normalize("1.5", "object_counting") != bbh.normalize("15", "object_counting")


def _wrong_answers(task: str, target: str, targets: list[str]) -> list[str]:
    """Answers that are wrong under BBH's exact match: the task's other targets, and for numbers the sign
    flipped; for dyck_languages also one bracket changed."""
    out = [t for t in dict.fromkeys(targets) if t.lower() != target.lower()][:8]
    if target.lstrip("-").isdigit() and int(target) != 0:
        out.append(str(-int(target)))
    if task == "dyck_languages":
        out.append(target[:-1] + (")" if target[-1] != ")" else "]"))
    return out


def test_every_task_scores_wrong_answers_wrong_and_gold_right(shared_data):
    for task in bbh.tasks(str(shared_data)):
        rows = bbh.load_task(str(shared_data), task)
        targets = [r["target"] for r in rows]
        preds, expected = [], []
        for r in rows:
            for answer, ok in [(r["target"], True)] + [
                (w, False) for w in _wrong_answers(task, r["target"], targets)
            ]:
                preds.append(
                    {
                        "id": r["id"],
                        "task": task,
                        "input": r["input"],
                        "output": f"So the answer is {answer}.",
                    }
                )
                expected.append(ok)
        verdicts = bbh.score_predictions(preds, str(shared_data)).verdicts
        got = [v["correct"] for v in verdicts]
        wrong = [(p["output"], v["gold"]) for p, v, e in zip(preds, verdicts, expected) if v["correct"] != e]
        assert got == expected, (task, len(wrong), wrong[:3])


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
    rescored = score_file("bbh", tmp_path / "predictions.jsonl", data_dir="demo")
    assert (rescored["score"], rescored["counts"]) == (metrics["score"], metrics["counts"])  # two paths agree
    assert metrics["score"] == 0.0  # tiny model seed 0, greedy, 8 tokens: never "True"/"False" after "A:"
