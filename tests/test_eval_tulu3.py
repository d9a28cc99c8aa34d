"""The Tulu 3 suite's benchmarks on made rows and the shipped demo items: IFBench, DROP, AGIEval English, MMLU-Pro,
GPQA, PopQA (the agreement rows on the real files are in test_agreement.py)."""

from __future__ import annotations

import json

import pytest

from tulu_kit.evals import agieval, cot_mc, drop, gpqa, ifbench, mmlu_pro, popqa
from tulu_kit.evals.core import score_file
from tulu_kit.evals.data import SOURCES, MissingDataError, data_root
from tulu_kit.io import write_jsonl


# ---------------------------------------------------------------------------------------------- OLMES CoT MC
@pytest.mark.parametrize(
    ("text", "letter", "fmt"),
    [
        ("(B) looks right. Therefore, the answer is (C).", "C", 1.0),  # the format regex, last match
        ("Therefore, the answer is (A). Wait. Therefore, the answer is (D)", "D", 1.0),
        ("So the answer is: (e)", "e", 0.5),  # fallback 1 (case-insensitive), compared ignoring case
        ("Answer: J", "J", 0.5),  # fallback 2
        ("I pick B\nmaybe E", "E", 0.0),  # the last stand-alone letter
        ("no letter here", "", 0.0),
    ],
)
def test_olmes_letter_extraction(text, letter, fmt):
    assert cot_mc.extract_letter(text, cot_mc.format_regex(10), "J") == (letter, fmt)


def test_tulu3_description_is_olmes_text():
    assert cot_mc.description(cot_mc.FOUR).endswith("is one of (A), (B), (C), (D).\n\n")
    assert cot_mc.final_description(cot_mc.MANY).startswith("\n\nAnswer the above question and REMEMBER")
    assert cot_mc.final_description(cot_mc.MANY).endswith("(D), (E), etc.")
    assert cot_mc.format_regex(4) == r"Therefore, the answer is \(([A-D])\)"


def test_gpqa_extraction_is_olmes_gpqa():
    assert gpqa.extract("Therefore, the answer is (B)") == ("B", 1.0)
    assert gpqa.extract("I think (A) then (C) is it") == ("C", 0.5)  # the last "(X)"
    assert gpqa.extract("The correct answer is: D") == ("D", 0.5)
    assert gpqa.extract("B\nQuestion: next one, Therefore, the answer is (A)") == (
        "B",
        0.0,
    )  # cut at "Question:"


# ---------------------------------------------------------------------------------------------- DROP scoring
@pytest.mark.parametrize(
    ("pred", "gold", "em", "f1"),
    [
        ("16,800", "16800", 1.0, 1.0),  # commas go, numbers compare as floats
        ("The Bears", "bears", 1.0, 1.0),  # case and articles
        ("17 yards", "17", 0.0, 0.67),
        ("18", "17", 0.0, 0.0),  # numbers differ: no partial credit
        ("Paris and Lyon", "Paris and Lyon", 1.0, 1.0),
        (["Paris", "Lyon"], ["Lyon", "Paris"], 1.0, 1.0),  # spans as bags, any order
        (["Paris"], ["Paris", "Lyon"], 0.0, 0.5),
    ],
)
def test_drop_official_metric(pred, gold, em, f1):
    assert drop.em_f1(pred, gold) == (em, f1)


def test_drop_scores_max_over_golds_and_holds_out_dev_exemplars(tiny_model, tmp_path):
    assert drop.score_one("two", ["2", "two"]) == (1.0, 1.0)
    dev = drop.load_examples("demo")
    shots, source = drop.exemplars("demo", dev)
    assert source == "dev (held out)" and shots == dev[:3]
    prompt = drop.build_prompt(dev[3], shots)
    assert prompt.count("Passage: ") == 4 and prompt.endswith(f"Question: {dev[3]['question']}\nAnswer:")
    assert "\nAnswer: 17\n\nPassage: " in prompt
    cfg = drop.DROPConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), max_new_tokens=4)
    metrics = drop.run(cfg)
    assert metrics["counts"]["n"] == 3 and metrics["exemplar_source"] == "dev (held out)"
    rescored = score_file("drop", tmp_path / "predictions.jsonl", data_dir="demo")
    assert (rescored["score"], rescored["em"]) == (metrics["score"], metrics["em"])


# ---------------------------------------------------------------------------------------------- AGIEval
def test_agieval_prompt_and_macro_average(tmp_path):
    ex = agieval.load_examples("demo")
    assert len(ex) == 8 and {e["group"] for e in ex} == set(agieval.TASKS)
    sat = next(e for e in ex if e["group"] == "sat-math")
    assert (
        "etc.\n\nQ: If x + 2 = 5, what is x? Answer Choices: (A)1 (B)2 (C)3 (D)4\n\nAnswer the above"
        in sat["text"]
    )
    lsat = next(e for e in ex if e["group"] == "lsat-rc")
    assert (
        "etc.\n\nThe author argues that bees are vital to farms.Q: The main point is that Answer"
        in lsat["text"]
    )
    # right on three tasks (one question each here): the macro average over the 8 tasks
    preds = [{"id": e["id"], "output": f"Therefore, the answer is ({e['gold'] if e['n_choices'] == 5 and e['group'] != 'lsat-lr' else 'Z'})"} for e in ex]  # fmt: skip
    scored = agieval.score_predictions(preds, "demo")
    assert scored.metrics["counts"]["correct"] == 3 and scored.metrics["score"] == pytest.approx(3 / 8)
    assert scored.metrics["subscores"]["aqua-rat"] == 1.0 and scored.metrics["subscores"]["sat-en"] == 0.0
    aqua = next(e for e in ex if e["group"] == "aqua-rat")
    wrong = [{"id": sat["id"], "output": "Therefore, the answer is (A)"}] * 3  # one task answered three times
    macro = agieval.score_predictions([{"id": aqua["id"], "output": f"({aqua['gold']})"}, *wrong], "demo")
    assert macro.metrics["score"] == 0.5 and macro.metrics["counts"]["correct"] == 1  # micro would be 0.25


def test_agieval_bad_label_names_file_and_line(tmp_path):
    (tmp_path / "agieval" / "v1").mkdir(parents=True)
    row = {"passage": None, "question": "q", "options": ["(A)x", "(B)y"], "label": "C"}
    (tmp_path / "agieval" / "v1" / "aqua-rat.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(
        ValueError, match=r"aqua-rat.jsonl: line 1: label 'C' is not one of the option letters"
    ):
        agieval.load_task(str(tmp_path), "aqua-rat")


# ---------------------------------------------------------------------------------------------- MMLU-Pro
def test_mmlu_pro_cot_prompt_and_mc_scoring(tiny_model, tmp_path):
    ex = mmlu_pro.load_examples("demo")
    e = ex[0]
    assert (
        "\n\nQuestion: What is 2 + 2?\n (A) 3\n (B) 4\n (C) 5\n (D) 6\n (E) 7\n\nAnswer the above"
        in e["text"]
    )
    block = mmlu_pro.mcq_block(e, True)
    assert block == "Question: What is 2 + 2?\n A. 3\n B. 4\n C. 5\n D. 6\n E. 7\nAnswer: B"
    # MC form: the argmax over the question's own options (a higher score past them is ignored)
    preds = [
        {"id": "1", "logprobs": [-3.0, -1.0, -2.0, -4.0, -5.0]},
        {"id": "2", "logprobs": [-1.0, -2.0, -3.0, -4.0]},
    ]
    scored = mmlu_pro.score_predictions(preds, "demo")
    assert [v["predicted"] for v in scored.verdicts] == ["B", "A"] and scored.metrics["counts"][
        "correct"
    ] == 1
    cfg = mmlu_pro.MMLUProConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), form="mc",
                                 chat=False, subset="math")  # fmt: skip
    metrics = mmlu_pro.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert metrics["counts"]["n"] == 2 and [len(r["logprobs"]) for r in rows] == [5, 4]
    assert rows[0]["prompt"].count("Question: ") == 6  # 5 validation exemplars + the question


def test_mmlu_pro_mc_needs_the_validation_file(tmp_path):
    (tmp_path / "mmlu_pro").mkdir()
    (tmp_path / "mmlu_pro" / "test.jsonl.gz").write_bytes((data_root("demo") / mmlu_pro.FILE).read_bytes())
    cfg = mmlu_pro.MMLUProConfig(
        model="unused/model", data_dir=str(tmp_path), out_dir=str(tmp_path / "o"), form="mc"
    )
    with pytest.raises(MissingDataError, match="mmlu_pro/validation.jsonl"):
        mmlu_pro.run(cfg)


# ---------------------------------------------------------------------------------------------- GPQA
def test_gpqa_shuffle_is_olmes_seeded_per_row(tiny_model, tmp_path):
    import random

    ex = gpqa.load_examples("demo")
    for i, e in enumerate(ex):
        rows = gpqa.read_rows("demo")[i]
        choices = [gpqa.preprocess(rows[f"Incorrect Answer {k}"]) for k in (1, 2, 3)] + [
            rows["Correct Answer"]
        ]
        random.Random(111 + i).shuffle(choices)
        assert e["options"] == choices and e["options"][ord(e["gold"]) - 65] == rows["Correct Answer"]
    assert ex[0]["text"].count(" (A) ") == 1 and "\nChoices:\n (A) " in ex[0]["text"]
    assert gpqa.preprocess(" a [title] b [x]c  d ") == "a. b c d"
    cfg = gpqa.GPQAConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), max_new_tokens=3)
    metrics = gpqa.run(cfg)
    assert metrics["counts"]["n"] == 3 and metrics["shuffle_seed"] == 111


# ---------------------------------------------------------------------------------------------- PopQA
def test_popqa_made_rows(tiny_model, tmp_path):
    rows = popqa.load_examples("demo")
    by_prop = {}
    for r in rows:
        by_prop.setdefault(r["prop_id"], []).append(r)
    # k // (relations - 1) from each other relation (PopQA: 15 // 15 = 1 of each), never the question's own;
    # the same draw for the same question
    shots = popqa.exemplars(rows[0], by_prop, k=2)
    assert sorted(s["prop_id"] for s in shots) == ["22", "91"] and shots == popqa.exemplars(
        rows[0], by_prop, k=2
    )
    assert sorted(s["prop_id"] for s in popqa.exemplars(rows[0], by_prop, k=15)) == ["22", "22", "91", "91"]
    prompt = popqa.build_prompt(rows[0], shots)
    assert prompt.count("Q: ") == 3 and prompt.endswith("\n\nQ: What is the capital of France? A:")
    assert f"Q: {shots[0]['question']} A: {shots[0]['obj']}\n\n" in prompt
    japan = rows[1]
    assert popqa.is_correct("\n\nTokyo, Japan\nQ: next", japan["answers"])  # an alias inside the first line
    assert popqa.is_correct(" tokyo", japan["answers"])  # lower-cased alias
    assert not popqa.is_correct("Kyoto\nTokyo", japan["answers"]) and not popqa.is_correct(
        "", japan["answers"]
    )
    preds = [{"question": japan["question"], "output": " Tokyo"}, {"id": rows[0]["id"], "output": " Lyon"}]
    write_jsonl(tmp_path / "p.jsonl", preds)
    metrics = score_file("popqa", tmp_path / "p.jsonl", tmp_path / "s", "demo")
    assert metrics["counts"] == {"n": 2, "correct": 1}
    assert SOURCES["popqa"] == [(popqa.URL, popqa.FILE)]  # prepare-eval --only popqa fetches the real file
    cfg = popqa.PopQAConfig(
        model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path / "run"), max_new_tokens=3
    )
    assert popqa.run(cfg)["counts"]["n"] == 6


def test_popqa_bad_answers_column_names_the_line(tmp_path):
    (tmp_path / "popqa").mkdir()
    (tmp_path / "popqa" / "test.tsv").write_text(
        "id\tquestion\tobj\tprop_id\tpossible_answers\n0\tQ?\tParis\t1\tParis\n"
    )
    with pytest.raises(ValueError, match=r"test.tsv: line 2: possible_answers is not a JSON list"):
        popqa.load_examples(str(tmp_path))


# ---------------------------------------------------------------------------------------------- IFBench
def test_ifbench_demo_scores_and_versions(tmp_path):
    inputs = ifbench.load_inputs("demo", "v294")
    preds = [{"prompt": inputs[0]["prompt"], "response": "teateateateatea"},
             {"prompt": inputs[2]["prompt"], "response": "I have 1 cat, 2 dogs and 3 fish."}]  # fmt: skip
    write_jsonl(tmp_path / "p.jsonl", preds)
    metrics = score_file("ifbench", tmp_path / "p.jsonl", data_dir="demo", version="v294")
    assert metrics["counts"]["n"] == 2 and metrics["score"] == 1.0 and metrics["version"] == "v294"
    with pytest.raises(ValueError, match="one of"):
        ifbench.load_inputs("demo", "v301")


def test_ifbench_missing_nltk_data_is_an_error_before_scoring(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "none")])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    row = {
        "key": "9",
        "prompt": "p",
        "instruction_id_list": ["ratio:stop_words"],
        "kwargs": [{"percentage": 10}],
    }
    with pytest.raises(MissingDataError, match="corpora/stopwords"):
        ifbench.score_predictions([{"prompt": "p", "response": "r"}], data_dir=str(tmp_path), inputs=[row])


def test_cli_score_passes_a_benchmark_setting(tmp_path, capsys):
    from tulu_kit.cli import main

    inputs = ifbench.load_inputs("demo")
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": inputs[0]["prompt"], "response": "a b"}])
    assert main(["score", "ifbench", "--predictions", str(tmp_path / "p.jsonl"), "--data-dir", "demo",
                 "--set", "version=v294"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == "v294" and printed["score"] == 0.0


@pytest.mark.parametrize("name", ["ifbench", "drop", "agieval", "mmlu_pro", "gpqa", "popqa"])
def test_notebook_parameters_are_config_fields(name):
    """Each notebook's parameters cell names only fields of its benchmark's config (a misspelt one would fail
    `collect` at run time), with the config's defaults for the protocol fields."""
    import ast
    import dataclasses
    from pathlib import Path

    import nbformat

    from tulu_kit.evals.core import get_benchmark

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "eval" / f"{name}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    values = {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body for t in n.targets}
    config = get_benchmark(name).CONFIG
    fields = {f.name: f.default for f in dataclasses.fields(config)}
    assert set(values) <= set(fields)
    assert {k: values[k] for k in ("chat", "max_examples")} == {
        k: fields[k] for k in ("chat", "max_examples")
    }
    assert values["out_dir"] == fields["out_dir"] == f"../runs/lab/eval_{name}"


# ---------------------------------------------------------------------------------------------- published scores
def test_shipped_published_scores_match_the_reference_file(shared_data):
    """Every number of tulu_kit/assets/published_scores.csv is the one the project's reference table gives for the
    same model, stage and benchmark (Tulu 3 8B: the paper v5 where card and paper differ)."""
    import csv

    from tulu_kit.report import _published_assets

    ref = list(
        csv.DictReader(
            open(shared_data.parent / "reference" / "published-stage-scores.csv", encoding="utf-8")
        )
    )
    models = {"OLMo 2 1B SFT": ("OLMo 2 1B", "SFT"), "OLMo 2 1B DPO": ("OLMo 2 1B", "DPO"),
              "OLMo 2 1B Instruct": ("OLMo 2 1B", "RLVR (final)"), "Tulu 3 8B SFT": ("Tulu 3 8B", "SFT"),
              "Tulu 3 8B DPO": ("Tulu 3 8B", "DPO"), "Tulu 3 8B": ("Tulu 3 8B", "RLVR (final)")}  # fmt: skip
    rows = list(csv.DictReader(open(data_root("demo").parents[0] / "published_scores.csv", encoding="utf-8")))
    assert len(rows) == 60 and set(_published_assets()) == set(models)
    for row in rows:
        model, stage = models[row["reference"]]
        suite = "Tulu 3 (OLMES)" if model == "Tulu 3 8B" else "OLMo 2 instruct card (10 tasks)"
        found = {float(r["value"]) for r in ref if (r["model"], r["stage"], r["suite"], r["benchmark"]) == (
            model, stage, suite, row["published_as"]) and ("T3-v5" in r["source"] or model != "Tulu 3 8B")}  # fmt: skip
        assert found == {float(row["value"])}, row


def test_report_sets_the_new_benchmarks_beside_the_matching_published_row(tmp_path):
    from tulu_kit.io import atomic_write_json
    from tulu_kit.report import published_table

    def metrics(stage, benchmark, metric, score, **config):
        atomic_write_json(tmp_path / stage / "metrics.json", {
            "benchmark": benchmark, "metric": metric, "score": score, "stderr": 0.01, "counts": {"n": 10},
            "model": "runs/x/dpo/model", "config": {"data_dir": "/d", "max_examples": None, "subset": "", **config}})  # fmt: skip

    metrics("eval_drop", "drop", "f1", 0.40)
    metrics("eval_popqa", "popqa", "exact_match", 0.10)
    metrics("eval_mmlu", "mmlu", "accuracy", 0.38)  # letter probability: not the published 0-shot CoT
    metrics("eval_gpqa", "gpqa", "exact_match", 0.25, subset="main")  # no published per-stage number
    metrics("eval_drop_demo", "drop", "f1", 0.9, data_dir="demo")
    table, notes = published_table(tmp_path, "OLMo 2 1B DPO")
    got = {r["benchmark"]: (r["score"], r["OLMo 2 1B DPO"]) for _, r in table.iterrows()}
    assert got == {"drop": (pytest.approx(40.0), 34.5), "popqa": (pytest.approx(10.0), 12.3)}
    assert any(n.startswith("mmlu: published as accuracy_cot") for n in notes)
    assert any(n.startswith("run on demo items") and "drop" in n for n in notes)


def test_prepare_eval_converters_write_the_layout_the_loaders_read(tmp_path):
    """MMLU-Pro's Hub parquet -> test.jsonl.gz the loader reads; DROP's official zip -> its train JSON only."""
    import io
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tulu_kit.evals import data

    rows = [{"question_id": 7, "question": "Q?", "options": ["a", "b", "c"], "answer": "C", "answer_index": 2,
             "cot_content": "", "category": "math", "src": "x"}]  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    data.CONVERT["test-00000-of-00001.parquet"](buf.getvalue(), tmp_path / "mmlu_pro" / "test.jsonl.gz")
    (ex,) = mmlu_pro.load_examples(str(tmp_path))
    assert (ex["id"], ex["gold"], ex["n_choices"], ex["group"]) == ("7", "C", 3, "math")
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("drop_dataset/drop_dataset_train.json", '{"s": {"passage": " P", "qa_pairs": []}}')
        f.writestr("drop_dataset/drop_dataset_dev.json", "{}")
    data.CONVERT["drop_dataset.zip"](z.getvalue(), tmp_path / drop.TRAIN)
    assert json.loads((tmp_path / drop.TRAIN).read_text()) == {"s": {"passage": " P", "qa_pairs": []}}
    assert {u.rsplit("/", 1)[-1] for u, _ in SOURCES["mmlu_pro"] + SOURCES["drop"]} <= set(data.CONVERT) | {
        "drop_v0_dev.jsonl.gz"
    }


def test_cli_eval_set_names_an_unknown_setting_or_a_bad_value(capsys):
    """`--set` is checked as a recipe's keys are, before any model loads: the key, its type, its choices."""
    from tulu_kit.cli import main

    def fails(*settings):
        assert (
            main(["eval", *settings[:1], "--model", "x/y", "--data-dir", "demo", "--set", *settings[1:]]) == 2
        )
        return capsys.readouterr().err

    err = fails("gpqa", "shufle_seed=1")
    assert "tulu-kit eval gpqa: unknown key 'shufle_seed' (did you mean 'shuffle_seed'?)" in err
    assert "tulu-kit eval gpqa: shuffle_seed: expected an integer, got 'one'" in fails(
        "gpqa", "shuffle_seed=one"
    )
    assert "tulu-kit eval mmlu: form: must be one of 'mc', 'rc', got 'cloze'" in fails("mmlu", "form=cloze")


def test_prepare_eval_lays_out_the_new_benchmarks(tmp_path, monkeypatch):
    """prepare-eval with a fake network: each URL's bytes land where the loaders look (NLTK zips unpacked)."""
    import io
    import zipfile

    from tulu_kit.evals import data

    def fake_fetch(url: str) -> bytes:
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".zip") and "nltk" in url:
            top = name.removesuffix(".zip")
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                z.writestr(f"{top}/english/x.txt", "data")
            return buf.getvalue()
        return f"bytes of {url}".encode()

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    root = data.prepare_eval(str(tmp_path), ["ifbench", "gpqa", "popqa", "agieval"])
    for rel in ("ifbench/IFBench_test.jsonl", "ifbench/IFBench_test_v2025-07_294.jsonl", "gpqa/dataset.zip",
                "popqa/test.tsv", "agieval/v1/lsat-ar.jsonl", "nltk_data/tokenizers/punkt_tab/english/x.txt",
                "nltk_data/corpora/stopwords/english/x.txt",
                "nltk_data/taggers/averaged_perceptron_tagger_eng/english/x.txt"):  # fmt: skip
        assert (root / rel).is_file(), rel
    assert (
        (root / "ifbench/IFBench_test.jsonl")
        .read_text()
        .endswith(f"{ifbench.COMMIT}/data/IFBench_test.jsonl")
    )
