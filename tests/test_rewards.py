"""Verifiable rewards (tulu_kit.rewards): the eval scorers themselves, 0 and counted on odd output, never raising."""

from __future__ import annotations

import json
import re

import pytest

from tulu_kit import rewards
from tulu_kit.data.synthetic import synthetic_arithmetic
from tulu_kit.evals import gsm8k, ifeval, sandbox
from tulu_kit.evals import math as math_eval


@pytest.fixture(autouse=True)
def _fresh_failures():
    rewards.FAILURES.clear()
    yield
    rewards.FAILURES.clear()


def row(dataset, ground_truth, prompt="q"):
    return {
        "messages": [{"role": "user", "content": prompt}],
        "ground_truth": ground_truth,
        "dataset": dataset,
    }


def test_gsm8k_reward_is_the_eval_scorer():
    cases = ["The answer is 7.", "7 apples, then 8", "It is 1,234.", "-3", "So the answer is 7.0 dollars"]
    for text in cases:
        want = float(gsm8k.is_correct(gsm8k.extract_answer(text), "7"))
        assert rewards.verifiable_reward(row("gsm8k", "7"), text) == want
    assert [rewards.verifiable_reward(row("gsm8k", gt), t) for gt, t in
            [("7", "The answer is 7."), ("7", "The answer is 8."), ("1234", "It is 1,234."),
             ("72", "#### 72 ... so 72"), ("#### 72", "the answer is 72")]] == [1.0, 0.0, 1.0, 1.0, 1.0]  # fmt: skip


def test_rewards_call_the_eval_modules_not_copies(monkeypatch):
    # a wrong answer scores 1 once the *eval's* function says so: the reward goes through the same object
    monkeypatch.setattr(gsm8k, "is_correct", lambda pred, gold: True)
    assert rewards.verifiable_reward(row("gsm8k", "7"), "The answer is 8.") == 1.0
    monkeypatch.setattr(math_eval, "is_equiv", lambda pred, gold: True)
    assert rewards.verifiable_reward(row("math", "2"), "\\boxed{3}") == 1.0
    monkeypatch.setattr(ifeval, "check", lambda inp, resp: ([True, False, False, False], []))
    gt = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert rewards.verifiable_reward(row("ifeval", gt), "a, b") == 0.25
    seen = []
    monkeypatch.setattr(
        sandbox, "run_tests", lambda job, limits: seen.append(job) or sandbox.ExecResult("passed")
    )
    assert rewards.verifiable_reward(row("code", "assert f() == 1"), "def f():\n    return 2") == 1.0
    assert seen == [sandbox.Sample("def f():\n    return 2\n", "assert f() == 1")]


def test_math_reward():
    assert rewards.verifiable_reward(row("math", "\\frac{1}{2}"), "so \\boxed{\\frac12}") == 1.0
    assert rewards.verifiable_reward(row("math", "\\frac{1}{2}"), "so \\boxed{0.5}") == 1.0
    assert (
        rewards.verifiable_reward(
            row("math", "3"), "Final Answer: The final answer is $4$. I hope it is correct."
        )
        == 0.0
    )
    assert rewards.verifiable_reward(row("math", "3"), "no answer here") == 0.0
    assert rewards.FAILURES == {"math/no_answer": 1}


def test_ifeval_reward_share_of_instructions_followed():
    gt = {
        "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
        "kwargs": [{}, {}],
    }
    assert rewards.verifiable_reward(row("ifeval", gt), "<<a title>> and no commas") == 1.0
    assert rewards.verifiable_reward(row("ifeval", json.dumps(gt)), "<<a title>> with a comma, here") == 0.5
    assert rewards.verifiable_reward(row("ifeval", gt), "no title, and a comma") == 0.0
    # open-instruct's IFEvalG form: a one-element list with "instruction_id"
    alt = json.dumps([{"instruction_id": ["punctuation:no_comma"], "kwargs": [None]}])
    assert rewards.verifiable_reward(row("ifeval", alt), "fine") == 1.0
    assert rewards.FAILURES == {}


def test_code_reward_runs_in_the_sandbox():
    tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert rewards.verifiable_reward(row("code", tests), good) == 1.0
    assert rewards.verifiable_reward(row("code", [tests]), "def add(a, b):\n    return a - b") == 0.0
    # forging a verdict: exiting "successfully" before the tests run is a failure in the sandbox
    forged = "import os\nos._exit(0)\ndef add(a, b):\n    return 0"
    assert rewards.verifiable_reward(row("code", tests), forged) == 0.0
    assert rewards.verifiable_reward(row("code", tests), "import sys\nsys.exit(0)") == 0.0
    gt = {"prefix": "def add(a, b):\n", "tests": tests}
    assert rewards.verifiable_reward(row("code", gt), "    return a + b") == 1.0


def test_odd_output_scores_zero_and_is_counted():
    odd = [
        (row("gsm8k", "7"), "no number at all"),
        (row("gsm8k", "7"), None),
        (row("gsm8k", "7"), 12),
        (row("nope", "7"), "7"),
        (row("ifeval", "{not json"), "text"),
        ({"dataset": "gsm8k"}, "7"),
        ("not a row", "7"),
    ]
    assert [rewards.verifiable_reward(r, c) for r, c in odd] == [0.0] * len(odd)
    assert rewards.FAILURES == {
        "gsm8k/no_answer": 1,
        "gsm8k/not_text": 2,
        "nope/unknown_dataset": 1,
        "ifeval/error:JSONDecodeError": 1,
        "gsm8k/error:KeyError": 1,
        "?/unknown_dataset": 1,
    }
    assert rewards.failure_counts(reset=True)["gsm8k/not_text"] == 2 and not rewards.FAILURES


def test_trl_reward_funcs_scale_and_conversational_completions():
    (func,) = rewards.trl_reward_funcs(scale=10.0)
    assert func.__name__ == "verifiable"
    prompts = [[{"role": "user", "content": "What is 2 plus 3?"}]] * 3
    completions = [
        [{"role": "assistant", "content": t}] for t in ("The answer is 5.", "The answer is 6.", "?")
    ]
    out = func(prompts=prompts, completions=completions, ground_truth=["5"] * 3, dataset=["gsm8k"] * 3,
               completion_ids=None, trainer_state=None)  # fmt: skip
    assert out == [10.0, 0.0, 0.0]
    assert func(prompts=["q"], completions=["7"], ground_truth=["7"], dataset=["gsm8k"]) == [10.0]


def test_check_rows_names_line_and_key():
    good = row("gsm8k", "7")
    rewards.check_rows(
        [good, row("ifeval", {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})]
    )
    with pytest.raises(ValueError, match=r"rl\.jsonl: line 2: missing key 'ground_truth'"):
        rewards.check_rows([good, {"messages": good["messages"], "dataset": "gsm8k"}], "rl.jsonl")
    with pytest.raises(ValueError, match=r"line 1: key 'dataset' is 'gsm9k'"):
        rewards.check_rows([row("gsm9k", "7")], "rl.jsonl")
    with pytest.raises(ValueError, match=r"line 1: key 'ground_truth'"):
        rewards.check_rows([row("ifeval", {"kwargs": []})], "rl.jsonl")


def test_synthetic_arithmetic_rows_are_scored_by_gsm8k():
    rows = synthetic_arithmetic(200, seed=3)
    assert rows == synthetic_arithmetic(200, seed=3) and rows != synthetic_arithmetic(200, seed=4)
    rewards.check_rows(rows)
    for r in rows:
        q = r["messages"][0]["content"]
        a, b = (int(n) for n in re.findall(r"\d+", q.split("Question: ")[-1]))
        if "Subtract" in q:  # "Subtract b from a."
            a, b = b, a
        plus = any(w in q for w in ("plus", "sum", "Add", "+"))
        assert int(r["ground_truth"]) == (a + b if plus else a - b)
        assert 0 <= int(r["ground_truth"]) <= 18 and r["dataset"] == "gsm8k"
        assert rewards.verifiable_reward(r, f"The answer is {r['ground_truth']}.") == 1.0
        assert rewards.verifiable_reward(r, f"The answer is {int(r['ground_truth']) + 1}.") == 0.0
    assert {"plus" in r["messages"][0]["content"] for r in rows} == {True, False}


# ------------------------------------------------------------------ rewards that fail loudly (issue 23)
NO_TESTS = [5, [], "", {"tests": []}, "print(1)", {"prefix": "def f():\n"}, "assert (", ["x = 1"]]


@pytest.mark.parametrize("gt", NO_TESTS, ids=repr)
def test_a_code_row_without_tests_is_refused_before_training(gt):
    rows = [row("gsm8k", "7"), row("code", "assert f() == 1"), row("code", gt)]
    with pytest.raises(ValueError, match=r"^rl\.jsonl: line 3: key 'ground_truth': "):
        rewards.check_rows(rows, "rl.jsonl")


@pytest.mark.parametrize(
    "dataset, gt", [("gsm8k", ""), ("gsm8k", "no number"), ("gsm8k", None), ("math", "  "), ("math", [1])]
)
def test_a_row_no_verifier_can_score_is_refused(dataset, gt):
    with pytest.raises(ValueError, match=r"^rl\.jsonl: line 2: key 'ground_truth': "):
        rewards.check_rows([row("math", "\\frac{1}{2}"), row(dataset, gt)], "rl.jsonl")


def test_a_sandbox_that_cannot_run_stops_the_stage(monkeypatch):
    def broken(job, limits):
        raise sandbox.SandboxError("sandbox: the sandboxed program cannot read /opt/python")

    monkeypatch.setattr(sandbox, "run_tests", broken)
    with pytest.raises(sandbox.SandboxError, match="cannot read /opt/python"):
        rewards.verifiable_reward(row("code", "assert f() == 1"), "def f():\n    return 1")
    (func,) = rewards.trl_reward_funcs()
    with pytest.raises(sandbox.SandboxError):
        func(prompts=["q"], completions=["def f():\n    return 1"], ground_truth=["assert f() == 1"],
             dataset=["code"])  # fmt: skip
    assert rewards.FAILURES == {}  # not a quiet 0


FORGERIES = {  # wrong code that forged a pass when the tests ran in the program's own process (issue 23)
    "replace json.dumps": 'import json\njson.dumps = lambda *a, **k: \'{"status": "passed"}\'\n',
    "replace os.write": "import os\n_w = os.write\nos.write = lambda fd, b: _w(fd, b.replace(b'failed', b'passed'))\n",
    "always-equal result": "class E:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return E()\n",
    "exit early": "import os\nos._exit(0)\n",
}


@pytest.mark.parametrize("name", FORGERIES)
def test_code_reward_forgeries_score_zero(name):
    tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
    wrong = "def add(a, b):\n    return 0\n"
    code = FORGERIES[name] if "def add" in FORGERIES[name] else FORGERIES[name] + wrong
    assert rewards.verifiable_reward(row("code", tests), code) == 0.0
