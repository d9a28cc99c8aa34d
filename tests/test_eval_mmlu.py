"""MMLU: both CSV layouts, the exact prompt, letter-probability scoring, gold letters score 100%."""

from __future__ import annotations

import json

import pytest

from tulu_kit.evals import mmlu


def test_reads_original_and_shared_csv_formats(tmp_path):
    original = tmp_path / "orig.csv"
    original.write_text('What is 2+2?,3,4,5,6,B\n"A, b",x,y,z,w,D\n')
    assert mmlu.read_csv(original)[0] == {
        "question": "What is 2+2?",
        "choices": ["3", "4", "5", "6"],
        "answer": "B",
    }
    shared = tmp_path / "shared.csv"
    shared.write_text("question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,2\n")
    assert mmlu.read_csv(shared)[0]["answer"] == "C"
    shared.write_text("question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,7\n")
    with pytest.raises(ValueError, match="shared.csv: row 1: field answer"):
        mmlu.read_csv(shared)


def test_prompt_matches_hendrycks_format():
    dev = [{"question": "1+1?", "choices": ["1", "2", "3", "4"], "answer": "B"}]
    row = {"question": "2+2?", "choices": ["3", "4", "5", "6"], "subject": "high_school_math"}
    body = "1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    # open-instruct / hendrycks: format_subject puts a space before each word, after "about " -- two spaces
    assert mmlu.build_prompt(row, dev, 1) == (
        "The following are multiple choice questions (with answers) about  high school math.\n\n" + body
    )
    assert mmlu.build_prompt(row, dev, 1, "lm-eval") == (
        "The following are multiple choice questions (with answers) about high school math.\n\n" + body
    )


def test_free_text_prediction_reads_the_standalone_letter():
    assert [mmlu._letter({"prediction": t}, 1) for t in ("Answer: B", "(c)", "D.", " a ", "none")] == [
        "B", "C", "D", "A", None,
    ]  # fmt: skip


def test_gold_letters_score_100_percent_and_letters_from_text(shared_data):
    rows = [r for s in mmlu.subjects(str(shared_data)) for r in mmlu.load_subject(str(shared_data), s)[1]]
    keys = ("subject", "question", "choices")  # some questions recur in a subject with other choices
    preds = [{**{k: r[k] for k in keys}, "prediction": r["answer"]} for r in rows]
    scored = mmlu.score_predictions(preds, str(shared_data))
    assert scored.metrics["counts"]["n"] == 14042 and scored.metrics["counts"]["correct"] == 14042
    assert len(scored.metrics["subscores"]) == 57
    wrong = [{"question": p["question"], "output": "I think (A) is right"} for p in preds[:4]]
    letters = [v["predicted"] for v in mmlu.score_predictions(wrong, str(shared_data)).verdicts]
    assert letters == ["A"] * 4


def test_run_on_demo_data_predicts_the_most_probable_letter(tiny_model, tmp_path):
    cfg = mmlu.MMLUConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), n_shot=2)
    metrics = mmlu.run(cfg)
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert metrics["counts"]["n"] == 3 and len(preds) == 3
    for p in preds:
        assert p["prediction"] == "ABCD"[max(range(4), key=lambda i: p["logprobs"][i])]
        assert p["prompt"].count("Answer:") == 3  # two dev exemplars + the question
    assert metrics["score"] == sum(p["prediction"] == p["answer"] for p in preds) / 3


def test_cloze_form_is_olmes_prompt_without_options():
    dev = [{"question": "1+1?", "choices": ["1", "2", "3", "4"], "answer": "B"}]
    row = {"question": "2+2?", "choices": ["3", "4", "5", "6"], "subject": "high_school_math"}
    assert mmlu.build_prompt(row, dev, 1, "lm-eval", "rc") == (
        "The following are multiple choice questions (with answers) about high school math.\n\n"
        "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer:"
    )


class _Sums:
    """A backend whose log-likelihood of a continuation is given per choice text."""

    def __init__(self, sums):
        self.sums, self.requests = sums, []

    def loglikelihood(self, requests):
        self.requests += requests
        return [(self.sums[cont.strip()], 1) for _ctx, cont in requests]


def test_cloze_picks_the_highest_log_likelihood_per_character():
    """ "Madrid" (6 characters) at -5.8 beats "Rome" (4) at -4.0 per character (-0.967 vs -1.0), though its sum is
    lower: a sum-argmax would say B, lm-eval's acc_norm (argmax of lls / len(choice)) says A. Counting the space
    before each choice (-5.8 / 7 = -0.829 vs -4.0 / 5 = -0.8) would say B."""
    row = {"id": "x/0", "subject": "x", "question": "Capital of Spain?", "choices": ["Madrid", "Rome", "Oslo", "Bern"],
           "answer": "A"}  # fmt: skip
    be = _Sums({"Madrid": -5.8, "Rome": -4.0, "Oslo": -9.0, "Bern": -8.0})
    (pred,) = mmlu.cloze(be, [row], ["P"])
    assert be.requests == [("P", " Madrid"), ("P", " Rome"), ("P", " Oslo"), ("P", " Bern")]
    assert pred["choice_loglikelihoods"] == [-5.8, -4.0, -9.0, -8.0]
    assert pred["per_char"][:2] == pytest.approx([-5.8 / 6, -1.0])
    assert pred["prediction"] == "A" and max(range(4), key=lambda i: pred["choice_loglikelihoods"][i]) == 1


def test_cloze_run_on_demo_data(tiny_model, tmp_path):
    cfg = mmlu.MMLUConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), form="rc", chat=True)
    metrics = mmlu.run(cfg)
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert metrics["counts"]["n"] == 3
    for p in preds:
        assert (
            "\nA. " not in p["prompt"]
            and "Question: " in p["prompt"]
            and p["prompt"].endswith("The answer is:")
        )
        assert p["prediction"] == "ABCD"[max(range(4), key=lambda i: p["per_char"][i])]
        assert p["per_char"] == pytest.approx(
            [s / len(c) for s, c in zip(p["choice_loglikelihoods"], p["choices"])]
        )
    assert metrics["score"] == sum(p["prediction"] == p["answer"] for p in preds) / 3
    assert metrics["protocol"]["extraction"].startswith("argmax of log-likelihood / len(choice)")


def test_cloze_scores_are_never_labelled_the_letter_form(tmp_path):
    """`tulu-kit score mmlu` on the cloze form's records: scored per character with form=rc (metric acc_norm, its
    protocol), refused without it; a misspelt form is refused too."""
    root = tmp_path / "data"
    (root / "mmlu" / "test").mkdir(parents=True)
    (root / "mmlu" / "dev").mkdir()
    (root / "mmlu" / "test" / "geo_test.csv").write_text("Capital of Spain?,Madrid,Rome,Oslo,Bern,A\n")
    (root / "mmlu" / "dev" / "geo_dev.csv").write_text("")
    rec = {"question": "Capital of Spain?", "subject": "geo", "per_char": [-0.9, -1.0, -2.0, -2.0]}
    scored = mmlu.score_predictions([rec], str(root), form="rc")
    assert scored.metrics["score"] == 1.0 and scored.metrics["metric"] == "acc_norm"
    assert scored.metrics["protocol"]["extraction"].startswith("argmax of log-likelihood / len(choice)")
    with pytest.raises(ValueError, match="prediction 1: has 'per_char'.*form=rc"):
        mmlu.score_predictions([rec], str(root))
    with pytest.raises(ValueError, match="prediction 1: field per_char must be a list of 4"):
        mmlu.score_predictions([{**rec, "per_char": [0.0, 1.0]}], str(root), form="rc")
    with pytest.raises(ValueError, match="form rc needs"):
        mmlu.score_predictions(
            [{"question": "Capital of Spain?", "logprobs": [0, 1, 2, 3]}], str(root), form="rc"
        )
    with pytest.raises(ValueError, match="form must be one of"):
        mmlu.run(
            mmlu.MMLUConfig(model="unused", data_dir=str(root), out_dir=str(tmp_path / "o"), form="cloze")
        )


def test_an_eval_folder_from_before_a_setting_existed_resumes(tiny_model, tmp_path):
    """eval_config.json written before `form` existed: the file was made at the default (mc), so it resumes."""
    cfg = mmlu.MMLUConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path))
    mmlu.run(cfg)
    saved = json.loads((tmp_path / "eval_config.json").read_text())
    del saved["form"]
    (tmp_path / "eval_config.json").write_text(json.dumps(saved))
    before = (tmp_path / "predictions.jsonl").read_text()
    mmlu.run(cfg)
    assert (tmp_path / "predictions.jsonl").read_text() == before
    with pytest.raises(ValueError, match="form"):  # the other form is another protocol: refused, never mixed
        mmlu.run(mmlu.MMLUConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), form="rc"))
