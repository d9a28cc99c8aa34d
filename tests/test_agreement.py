"""The agreement table of eval/README.md, re-checked row by row on the real files in ../shared/data.

Each test makes recorded predictions (official solutions, official model outputs, official verdicts), scores
them the way `tulu-kit score` does (`core.score_file`: predictions file in, metrics.json + results.jsonl out) and
checks the agreement count against the **N / M** the table states, so the table cannot drift from the code.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from pathlib import Path

import pytest

from tulu_kit.evals import (
    alpaca_eval,
    bbh,
    core,
    gsm8k,
    humaneval,
    mbpp_plus,
    mmlu,
    toxigen,
    truthfulqa_gen,
    xstest,
)
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


def agreement(kit: list, ref: list, styles: list[str]) -> tuple[tuple[int, int], dict[str, int]]:
    """(N agreeing, M) and, per prediction style, how many verdicts differ."""
    differ: dict[str, int] = {}
    for k, r, style in zip(kit, ref, styles, strict=True):
        if k != r:
            differ[style] = differ.get(style, 0) + 1
    return (len(kit) - sum(differ.values()), len(kit)), differ


def test_mmlu(shared_data, tmp_path):
    """No independent scorer applies to letter predictions (the answer key is the reference): the row checks the
    key, a wrong letter and free-text answers, and open-instruct's prompt text (vendored) against the kit's."""
    rows = [r for s in mmlu.subjects(str(shared_data)) for r in mmlu.load_subject(str(shared_data), s)[1]]
    styles = {
        "gold": (lambda a: a, True),
        "wrong letter": (lambda a: "ABCD"[("ABCD".index(a) + 1) % 4], False),
        "'Answer: X'": (lambda a: f"Answer: {a}", True),
    }
    kit, ref, names = [], [], []
    for k, (name, (make, right)) in enumerate(styles.items()):
        preds = [{"id": r["id"], "subject": r["subject"], "question": r["question"], "choices": r["choices"],
                  "prediction": make(r["answer"])} for r in rows]  # fmt: skip
        _, verdicts = score("mmlu", preds, shared_data, tmp_path / str(k))
        kit += [v["correct"] for v in verdicts]
        ref += [right] * len(rows)
        names += [name] * len(rows)
    counts, differ = agreement(kit, ref, names)
    assert differ == {} and [counts] == stated("mmlu")[:1]
    # prompts: open-instruct's own code (pandas reads each CSV) against the kit's, both prompt styles
    from ref_open_instruct import mmlu_prompts

    same = {"open-instruct": 0, "lm-eval": 0}
    n = 0
    for subject in mmlu.subjects(str(shared_data)):
        theirs = mmlu_prompts(str(shared_data / "mmlu"), subject)[
            1:
        ]  # pandas reads this copy's header as a row
        test = mmlu.load_subject(str(shared_data), subject)[1]
        n += len(test)
        for style in same:
            same[style] += sum(mmlu.build_prompt(r, [], 0, style) == t for r, t in zip(test, theirs))
    assert [(same["open-instruct"], n)] == stated("mmlu")[1:]
    assert same["lm-eval"] == 0  # one space apart on every prompt


def test_gsm8k(shared_data, tmp_path):
    """Against open-instruct's extraction and exact match (vendored, 042fa2f) on gold, wrong and adversarial outputs."""
    from ref_open_instruct import gsm_correct

    rows = _jsonl(shared_data / "gsm8k" / "test.jsonl")
    styles = {
        "gold solution": lambda r, g: r["answer"],
        "wrong number": lambda r, g: f"So the answer is {int(g) + 1}.",
        "'{gold}.0'": lambda r, g: f"So the answer is {g}.0.",
        "'-{gold}'": lambda r, g: f"So the answer is -{g}.",
    }
    preds, ref, names = [], [], []
    for name, make in styles.items():
        for i, r in enumerate(rows):
            g = gsm8k.gold_answer(r["answer"])
            out = make(r, g)
            preds.append({"id": f"{i}{name}", "question": r["question"], "output": out})
            ref.append(gsm_correct(out, r["answer"]))
            names.append(name)
    kit = []
    for name in styles:  # one file per style: the same question once per file
        part = [p for p in preds if p["id"].endswith(name)]
        _, verdicts = score("gsm8k", [{k: v for k, v in p.items() if k != "id"} for p in part], shared_data,
                            tmp_path / str(len(kit)))  # fmt: skip
        kit += [v["correct"] for v in verdicts]
    counts, differ = agreement(kit, ref, names)
    assert [counts] == stated("gsm8k")
    assert differ == {"'{gold}.0'": 1319, "'-{gold}'": 1317}  # the README's two classes (the kit is right)


def test_math(shared_data, tmp_path):
    """Against lm-eval 0.4.13's minerva_math `process_results` (exact_match or math_verify)."""
    from lm_eval.tasks.minerva_math import utils as lm

    every = _jsonl(shared_data / "math500" / "test.jsonl")
    nxt = {i: next(r["answer"] for r in every[i + 1 :] + every if r["answer"] != every[i]["answer"])
           for i in range(len(every))}  # fmt: skip
    # every 5th problem (100): math-verify on 1,500 outputs would take minutes; TULU_KIT_SLOW=1 runs all 500
    keep = range(len(every)) if os.environ.get("TULU_KIT_SLOW") else range(0, len(every), 5)
    rows, nxt = [every[i] for i in keep], [nxt[i] for i in keep]
    styles = {
        "gold solution": lambda i, r: r["solution"],
        "wrong answer": lambda i, r: f"Final Answer: The final answer is ${nxt[i]}$. I hope it is correct.",
        "'The final answer is $X$.'": lambda i, r: f"The final answer is ${r['answer']}$.",
    }
    kit, ref, names = [], [], []
    for k, (name, make) in enumerate(styles.items()):
        outs = [make(i, r) for i, r in enumerate(rows)]
        _, verdicts = score("math", [{"problem": r["problem"], "output": o} for r, o in zip(rows, outs)],
                            shared_data, tmp_path / str(k))  # fmt: skip
        kit += [v["correct"] for v in verdicts]
        for r, o in zip(rows, outs):
            res = lm.process_results(
                {"answer": lm.normalize_final_answer(r["answer"]), "solution": r["solution"]}, [o]
            )
            ref.append(bool(res["exact_match"] or res["math_verify"]))
        names += [name] * len(rows)
    counts, differ = agreement(kit, ref, names)
    assert counts == stated("math")[1 if os.environ.get("TULU_KIT_SLOW") else 0]
    assert differ == MATH_DIFFER


MATH_DIFFER = {"wrong answer": 1}  # problem 35: gold 3, "3, 5, 7"; lm-eval's normalization says equal


def test_bbh(shared_data, tmp_path):
    """Against open-instruct's extraction and exact match (vendored, 042fa2f)."""
    from ref_open_instruct import bbh_correct

    by_style: dict[str, list[tuple[dict, bool]]] = {}
    for t in bbh.tasks(str(shared_data)):
        rows = bbh.load_task(str(shared_data), t)
        targets = list(dict.fromkeys(e["target"] for e in rows))
        for e in rows:
            gold = e["target"]
            cases = {
                "gold": gold,
                "wrong target": next((x for x in targets if not bbh.is_correct(x, gold, t)), None),
            }
            if t in ("multistep_arithmetic_two", "object_counting"):
                cases["'{gold}.0' (numeric tasks)"] = f"{gold}.0"
                cases["sign flipped (numeric tasks)"] = gold[1:] if gold.startswith("-") else "-" + gold
            if t == "dyck_languages":
                cases["other brackets (dyck)"] = ") ]" if gold != ") ]" else "> }"
            for name, ans in cases.items():
                if ans is not None:
                    out = f"Let's think. So the answer is {ans}."
                    pred = {"id": e["id"], "task": t, "input": e["input"], "output": out}
                    by_style.setdefault(name, []).append((pred, bbh_correct(out, gold)))
    kit, ref, names = [], [], []
    for k, (name, items) in enumerate(by_style.items()):
        _, verdicts = score("bbh", [p for p, _ in items], shared_data, tmp_path / str(k))
        kit += [bool(v["correct"]) for v in verdicts]
        ref += [r for _, r in items]
        names += [name] * len(items)
    counts, differ = agreement(kit, ref, names)
    assert [counts] == stated("bbh")
    assert differ == BBH_DIFFER


# the README's classes: open-instruct strips every bracket (dyck: any bracket answer right) and the sign
BBH_DIFFER = {"wrong target": 95, "other brackets (dyck)": 97, "sign flipped (numeric tasks)": 499}


def test_tydiqa(shared_data, tmp_path):
    """Against the official SQuAD v1.1 functions (transcribed, tests/ref_squad_v11.py): F1 per prediction."""
    from ref_squad_v11 import f1_score, metric_max_over_ground_truths

    qas = []
    for path in sorted((shared_data / "tydiqa_goldp" / "dev").glob("*.json")):
        for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
            for para in article["paragraphs"]:
                qas += para["qas"]
    styles = {
        "gold": lambda i, qa: qa["answers"][0]["text"],
        "another question's answer": lambda i, qa: qas[i - 1]["answers"][0]["text"],
        "'The answer is X.'": lambda i, qa: f"The answer is {qa['answers'][0]['text']}.",
    }
    kit, ref, names = [], [], []
    for k, (name, make) in enumerate(styles.items()):
        outs = [make(i, qa) for i, qa in enumerate(qas)]
        _, verdicts = score("tydiqa", [{"id": qa["id"], "output": o} for qa, o in zip(qas, outs)], shared_data,
                            tmp_path / str(k))  # fmt: skip
        kit += [round(v["f1"], 12) for v in verdicts]
        ref += [round(metric_max_over_ground_truths(f1_score, o, [a["text"] for a in qa["answers"]]), 12)
                for qa, o in zip(qas, outs)]  # fmt: skip
        names += [name] * len(qas)
    counts, differ = agreement(kit, ref, names)
    assert [counts] == stated("tydiqa")
    assert differ == {}


def test_truthfulqa(shared_data, tmp_path):
    """Against lm-eval 0.4.13's TruthfulQA MC: `process_results_mc2` and MC1's accuracy (argmax over the best answer
    and the false ones), on seeded random log-probs and on ties."""
    import numpy as np
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    def split(answers: str) -> list[str]:  # utilities.split_multi_answer(close=True)
        out = []
        for a in answers.strip().split(";"):
            a = a.strip()
            if a:
                out.append(a if a.endswith(".") else a + ".")
        return out

    rng = random.Random(0)
    kit, ref, names = [], [], []
    for style in ("random log-probs", "tie: best = best false"):
        preds, refs = [], []
        with open(
            shared_data / "truthfulqa" / "v1_817" / "TruthfulQA.csv", encoding="utf-8", newline=""
        ) as f:
            for row in csv.DictReader(f):
                best = split(row["Best Answer"])[0]
                true, false = split(row["Correct Answers"]), split(row["Incorrect Answers"])
                if best not in true:
                    true.append(best)
                lp = {a: -rng.uniform(1, 30) for a in true + false}
                if style.startswith("tie"):
                    lp[best] = max(lp[a] for a in false)
                preds.append({"question": row["Question"], "logprobs": lp})
                mc2 = process_results_mc2({"mc2_targets": {"labels": [1] * len(true) + [0] * len(false)}},
                                          [(lp[a], False) for a in true + false])["acc"]  # fmt: skip
                mc1 = float(np.argmax([lp[best]] + [lp[a] for a in false]) == 0)
                refs.append((mc1, round(mc2, 9)))
        _, verdicts = score("truthfulqa", preds, shared_data, tmp_path / style[:3])
        kit += [(v["mc1"], round(v["mc2"], 9)) for v in verdicts]
        ref += refs
        names += [style] * len(preds)
    counts, differ = agreement(kit, ref, names)
    assert [counts] == stated("truthfulqa")
    assert differ == {
        "tie: best = best false": 817
    }  # lm-eval's argmax takes the first of a tie; TruthfulQA's > does not


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
