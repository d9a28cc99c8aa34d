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
    assert metrics["pass@1"] == 1.0 and "pass@10" not in metrics  # one sample a task: no pass@10
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


# ---------------------------------------------------------------------------------------------- Tulu 3 suite
def test_ifbench(shared_data, tmp_path, monkeypatch):
    """The vendored official checker against the shipped official verdicts (made at IFBench c94da02), per prompt
    file. Prompts whose checkers need NLTK data the shared folder lacks (stopwords, the POS tagger) are left out."""
    from tulu_kit.evals import ifbench

    monkeypatch.setenv("NLTK_DATA", str(shared_data / "nltk_data"))
    d = shared_data / "ifbench"
    sample = _jsonl(d / "sample_output.jsonl")
    strict = {r["prompt"]: r["follow_instruction_list"] for r in _jsonl(d / "eval_results_strict.jsonl")}
    loose = {r["prompt"]: r["follow_instruction_list"] for r in _jsonl(d / "eval_results_loose.jsonl")}
    got = []
    for version in ("v294", "v300"):
        inputs = {r["prompt"]: r for r in ifbench.load_inputs(str(shared_data), version)}
        preds = [
            s for s in sample
            if s["prompt"] in inputs and not set(inputs[s["prompt"]]["instruction_id_list"]) & set(ifbench.NLTK_EXTRA)
        ]  # fmt: skip
        write_jsonl(tmp_path / version / "p.jsonl", preds)
        core.score_file("ifbench", tmp_path / version / "p.jsonl", tmp_path / version / "s", str(shared_data),
                        version=version)  # fmt: skip
        verdicts = read_jsonl(tmp_path / version / "s" / "results.jsonl")
        got.append((sum(v["follow_instruction_list_strict"] == strict[p["prompt"]] for p, v in zip(preds, verdicts)),
                    len(preds)))  # fmt: skip
        got.append((sum(v["follow_instruction_list_loose"] == loose[p["prompt"]] for p, v in zip(preds, verdicts)),
                    len(preds)))  # fmt: skip
        # per instruction id: the official report's tier-1 lines over the same prompts' official loose verdicts
        official: dict[str, list[bool]] = {}
        for p, v in zip(preds, verdicts):
            for iid, ok in zip(v["instruction_id_list"], loose[p["prompt"]]):
                official.setdefault(iid, []).append(ok)
        m = json.loads((tmp_path / version / "s" / "metrics.json").read_text())
        assert m["counts"]["per_group"] == {k: len(v) for k, v in official.items()}
        differ = {i for p, v in zip(preds, verdicts) if v["follow_instruction_list_loose"] != loose[p["prompt"]]
                  for i in v["instruction_id_list"]}  # fmt: skip
        for iid, oks in official.items():
            if iid not in differ:
                assert m["subscores"][iid] == pytest.approx(sum(oks) / len(oks)), iid
    assert got == stated("ifbench")


def _drop_outputs(gold: str) -> list[str]:
    """Eight outputs per question: right, right in other case / with an article / inside a sentence, partial,
    a wrong number, a digit changed."""
    words = gold.split()
    return [gold, gold.upper() + ".", "the " + gold, f"It was {gold} yards", words[0] if words else "",
            " ".join(words[:-1]) or "none", "42", gold.replace("1", "7")]  # fmt: skip


def test_drop(shared_data):
    """EM and F1 per (question, output) against lm-eval's `drop` task (its process_results), eight made outputs
    per dev question: every question with TULU_KIT_SLOW=1, every tenth by default (the table states the sweep)."""
    from lm_eval.tasks.drop import utils as reference

    from tulu_kit.evals import drop

    full = bool(os.environ.get("TULU_KIT_SLOW"))
    examples = drop.load_examples(str(shared_data))
    agree = total = 0
    for e in examples if full else examples[::10]:
        doc = {"answers": [(g,) for g in e["golds"]]}
        for out in _drop_outputs(e["golds"][0]):
            ref = reference.process_results(doc, [out])
            agree += drop.score_one(out, e["golds"]) == (ref["em"], ref["f1"])
            total += 1
    ((n, m),) = stated("drop")
    assert (agree, total) == ((n, m) if full else (total, 8 * len(examples[::10])))
    assert m == 8 * len(examples)


def _letter_outputs(gold: str, wrong: str) -> list[str]:
    return [f"Reasoning.\nTherefore, the answer is ({gold}).", f"Maybe ({wrong}). Therefore, the answer is ({gold})",
            f"Therefore, the answer is ({wrong})."]  # fmt: skip


def test_mmlu_pro(shared_data):
    """The letter the kit extracts against lm-eval `mmlu_pro`'s filter (regex 'answer is \\(?([A-J])\\)?',
    take_first), three outputs per question; and the gold letter scores right."""
    from lm_eval.filters.extraction import RegexFilter

    from tulu_kit.evals import mmlu_pro

    examples = mmlu_pro.load_examples(str(shared_data))
    preds, outs = [], []
    for e in examples:
        wrong = "A" if e["gold"] != "A" else "B"
        for out in _letter_outputs(e["gold"], wrong):
            preds.append({"id": e["id"], "output": out})
            outs.append(out)
    ref = RegexFilter(regex_pattern=r"answer is \(?([ABCDEFGHIJ])\)?", group_select=0)
    theirs = [r[0] for r in ref.apply([[o] for o in outs], [{}] * len(outs))]
    verdicts = mmlu_pro.score_predictions(preds, str(shared_data)).verdicts
    assert sum(v["correct"] for v in verdicts[0::3]) == len(examples)  # the right answers score right
    ours = [v["extracted"] for v in verdicts]
    # lm-eval takes the FIRST "answer is (X)", OLMES (and the kit) the LAST format match: in these outputs only the
    # final sentence says "answer is", so both rules should name the same letter
    assert [(sum(a == b for a, b in zip(ours, theirs)), len(outs))] == stated("mmlu_pro")


def test_gpqa(shared_data):
    """The letter the kit extracts against lm-eval `gpqa_main_cot_zeroshot`'s flexible-extract filter (the last
    '(X)'), three outputs per main-set question; and the gold letter scores right. Read in memory only."""
    from lm_eval.filters.extraction import MultiChoiceRegexFilter

    from tulu_kit.evals import gpqa

    examples = gpqa.load_examples(str(shared_data))
    preds = [{"id": e["id"], "output": o} for e in examples
             for o in _letter_outputs(e["gold"], "A" if e["gold"] != "A" else "B")]  # fmt: skip
    scored = gpqa.score_predictions(preds, str(shared_data))
    assert sum(v["correct"] for v in scored.verdicts[0::3]) == len(examples) == 448
    ref = MultiChoiceRegexFilter(regex_pattern=r"(\([A-Z]\))", group_select=-1, ignore_case=True,
                                 ignore_punctuation=True)  # fmt: skip
    docs = [{"choices": e["options"]} for e in examples for _ in range(3)]
    theirs = [r[0].strip("()") for r in ref.apply([[p["output"]] for p in preds], docs)]
    ours = [v["extracted"] for v in scored.verdicts]
    assert [(sum(a == b for a, b in zip(ours, theirs)), len(preds))] == stated("gpqa")


def test_agieval(shared_data):
    """Each option's letter as the answer, scored by the kit and by lm-eval `agieval`'s process_results_mcqa (the
    argmax choice against the gold index from the same label): the verdicts agree on every (question, option)."""
    from lm_eval.tasks.agieval.utils import process_results_mcqa

    from tulu_kit.evals import agieval, cot_mc

    examples = agieval.load_examples(str(shared_data))
    preds, reference = [], []
    for e in examples:
        for i in range(e["n_choices"]):
            letter = cot_mc.LETTERS[i]
            preds.append({"id": e["id"], "output": f"Therefore, the answer is ({letter})."})
            onehot = [[0.0 if j == i else -10.0] for j in range(e["n_choices"])]
            doc = {"gold": [cot_mc.LETTERS.index(e["gold"])], "choices": e["options"]}
            reference.append(process_results_mcqa(doc, onehot)["acc"] == 1.0)
    verdicts = agieval.score_predictions(preds, str(shared_data)).verdicts
    assert sum(reference) == len(examples) == 2646
    assert [(sum(v["correct"] == r for v, r in zip(verdicts, reference)), len(preds))] == stated("agieval")


def test_popqa():
    assert (
        stated("popqa") == []
    )  # not measured: PopQA's data is not in the shared folder (tests use made rows)


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
