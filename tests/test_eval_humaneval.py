"""Code benchmarks: HumanEval, HumanEval+, MBPP+ (tulu_kit/evals/humaneval.py, humaneval_plus.py, mbpp_plus.py)."""

from __future__ import annotations

import json
import os
from math import comb

import pytest

from tulu_kit.evals import humaneval, humaneval_plus, mbpp_plus
from tulu_kit.evals.core import score_file
from tulu_kit.evals.sandbox import Limits
from tulu_kit.io import read_jsonl

# openai/human-eval README: the official evaluator's verdicts on data/example_samples.jsonl
OFFICIAL_EXAMPLE_VERDICTS = [False, False, False, True, True, True]
OFFICIAL_EXAMPLE_RESULTS = ["failed", "timed out", "failed", "passed", "passed", "passed"]


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(5, 2, 1), (5, 2, 2), (20, 3, 10), (10, 0, 1), (10, 10, 5)]:
        exact = 1.0 - comb(n - c, k) / comb(n, k)
        assert humaneval.pass_at_k(n, c, k) == pytest.approx(exact)
    assert humaneval.pass_at_k(5, 4, 2) == 1.0


def test_example_samples_get_the_official_verdicts(shared_data):
    problems = humaneval.read_problems(shared_data / "humaneval" / "example_problem.jsonl")
    rows = read_jsonl(shared_data / "humaneval" / "example_samples.jsonl")
    samples = humaneval.group_samples(rows, problems, "example_problem.jsonl")
    scored = humaneval.score_samples("humaneval", samples, humaneval.program, Limits(timeout_s=3.0), {}, 3)
    assert [v["passed"] for v in scored.verdicts] == OFFICIAL_EXAMPLE_VERDICTS
    assert [v["result"].split(":")[0] for v in scored.verdicts] == OFFICIAL_EXAMPLE_RESULTS
    # pass@k over one task with 3 of 6 correct
    assert scored.metrics["pass@1"] == pytest.approx(0.5)


def test_bad_prediction_rows_name_the_row(shared_data):
    with pytest.raises(ValueError, match="prediction 2: missing field 'completion'"):
        humaneval.score_predictions(
            [{"task_id": "HumanEval/0", "completion": ""}, {"task_id": "HumanEval/0"}], str(shared_data)
        )
    with pytest.raises(ValueError, match="prediction 1: task_id 'HumanEval/999'"):
        humaneval.score_predictions([{"task_id": "HumanEval/999", "completion": ""}], str(shared_data))


# MBPP+ tasks whose inputs need evalplus's deserialization (tuples, sets, complex) plus a few plain ones
MBPP_SUBSET = [2, 3, 63, 75, 106, 115, 124, 252, 259, 278, 580, 722, 770]


def test_mbpp_plus_canonical_solutions_pass(shared_data):
    problems = mbpp_plus.load_problems(str(shared_data))
    wanted = (
        problems
        if os.environ.get("TULU_KIT_SLOW")
        else {f"Mbpp/{i}": problems[f"Mbpp/{i}"] for i in MBPP_SUBSET}
    )
    preds = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in wanted.items()]
    scored = mbpp_plus.score_predictions(preds, str(shared_data))
    failed = [v for v in scored.verdicts if not v["passed"]]
    assert not failed, failed
    assert scored.metrics["pass@1"] == 1.0


def test_plus_inputs_catch_what_base_tests_miss():
    problems = humaneval_plus.load_problems("demo")
    add = problems["Demo/0"]
    wrong = "    return a + b if a < 1000 else 0\n"  # right on the base inputs, wrong on 10**6
    preds = [
        {"task_id": "Demo/0", "completion": add["canonical_solution"]},
        {"task_id": "Demo/0", "completion": wrong},
    ]
    scored = humaneval_plus.score_predictions(preds, "demo")
    assert [v["passed"] for v in scored.verdicts] == [True, False]
    assert "plus_input" in scored.verdicts[1]["result"]
    # the same wrong completion passes HumanEval's own (base) test
    assert humaneval.score_predictions([{"task_id": "Demo/0", "completion": wrong}], "demo").verdicts[0][
        "passed"
    ]


def test_float_outputs_compare_with_tolerance():
    problem = {
        "task_id": "Mbpp/1",
        "prompt": '"""third"""\n',
        "entry_point": "third",
        "canonical_solution": "def third(x):\n    return x / 3\n",
        "base_input": [[1.0]],
        "plus_input": [[2.0], [10.0]],
        "atol": 0,
    }
    near = "def third(x):\n    return x * (1 / 3)\n"  # differs in the last bits
    far = "def third(x):\n    return round(x / 3, 2)\n"
    res = [humaneval_plus.run_program_for(problem, c, "mbpp") for c in (near, far)]
    assert [r.passed for r in res] == [True, False]


@pytest.mark.parametrize("mod", [humaneval, humaneval_plus, mbpp_plus], ids=lambda m: m.NAME)
def test_tiny_model_end_to_end(mod, tiny_model, tmp_path):
    cfg = mod.CONFIG(
        model=str(tiny_model),
        data_dir="demo",
        out_dir=str(tmp_path / mod.NAME),
        n_samples=2,
        temperature=0.8,
        max_new_tokens=12,
        max_examples=2,
    )
    metrics = mod.run(cfg)
    preds = read_jsonl(tmp_path / mod.NAME / "predictions.jsonl")
    assert len(preds) == 4 and {"task_id", "completion"} <= set(preds[0])
    assert metrics["n_samples"] == 2 and metrics["counts"]["n"] == 2  # tasks
    saved = json.loads((tmp_path / mod.NAME / "metrics.json").read_text())
    assert saved["pass@1"] == metrics["pass@1"]
    rescored = score_file(mod.NAME, tmp_path / mod.NAME / "predictions.jsonl", data_dir="demo")
    assert rescored["pass@1"] == metrics["pass@1"] and rescored["counts"] == metrics["counts"]
    # tiny model seed 0, temperature 0.8, 12 new tokens: no sample passes a demo task
    assert metrics["pass@1"] == 0.0


# wrong completions that forged pass@1 = 1.00 when the tests ran in the candidate's process (issue 23)
FORGED_COMPLETIONS = {
    "replace json.dumps": 'import json\njson.dumps = lambda *a, **k: \'{"status": "passed"}\'\n',
    "replace os.write": "import os\n_w = os.write\nos.write = lambda fd, b: _w(fd, b.replace(b'failed', b'passed'))\n",
    "wrap __main__'s writers": "import __main__\nfor _n in dir(__main__):\n    if _n.startswith('_') and"
    " callable(getattr(__main__, _n)):\n        setattr(__main__, _n, lambda *a, **k: None)\n",
    "read the verdict fd": "import os\nfor _fd in os.listdir('/proc/self/fd'):\n    try:\n"
    "        open(f'/proc/self/fd/{_fd}', 'rb').read()\n    except OSError:\n        pass\n",
    "frames": "import sys\n_f = sys._getframe(0)\nwhile _f.f_back is not None:\n    _f = _f.f_back\n",
    "always-equal": "class _E(int):\n    def __eq__(self, o):\n        return True\n",
}


def test_forged_completions_score_zero():
    add = humaneval.load_problems("demo")["Demo/0"]
    wrong = "    return 0\n"
    preds = [{"task_id": "Demo/0", "completion": wrong + code} for code in FORGED_COMPLETIONS.values()]
    preds.append(
        {"task_id": "Demo/0", "completion": "    return _E(0)\n" + FORGED_COMPLETIONS["always-equal"]}
    )
    preds.append({"task_id": "Demo/0", "completion": add["canonical_solution"]})
    scored = humaneval.score_predictions(preds, "demo")
    assert [v["passed"] for v in scored.verdicts] == [False] * (len(preds) - 1) + [True], scored.verdicts
