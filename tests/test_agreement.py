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
