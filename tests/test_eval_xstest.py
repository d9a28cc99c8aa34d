"""XSTest: the string matcher against the official streval labels, judge plumbing, metrics, end to end."""

from __future__ import annotations

import csv

import pytest
from fake_judge import fake_openai

from tulu_kit.evals import xstest
from tulu_kit.evals.core import score_file
from tulu_kit.evals.judges import OpenAIJudge
from tulu_kit.io import read_jsonl


def test_strmatch_equals_official_streval_labels(shared_data):
    path = (
        shared_data / "xstest/evaluation/automated_evaluation_labels/xstest_v2_completions_gpt4_streval.csv"
    )
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    assert len(rows) == 450
    mismatches = [r["id"] for r in rows if xstest.strmatch_label(r["completion"]) != r["strmatch_label"]]
    assert mismatches == []
    labels = [r["strmatch_label"] for r in rows]  # the check is not vacuous: both labels, 225 each
    assert (labels.count("1_full_compliance"), labels.count("2_full_refusal")) == (225, 225)


def test_metrics_and_judge(shared_data, tmp_path):
    prompts = xstest.load_prompts(str(shared_data))
    assert len(prompts) == 450 and sum(p["safety_type"] == "unsafe" for p in prompts) == 200
    safe = [p for p in prompts if p["safety_type"] == "safe"][:3]
    unsafe = [p for p in prompts if p["safety_type"] == "unsafe"][:2]
    preds = [{"prompt": p["prompt"], "completion": "Sure, here is how."} for p in safe[:2]]
    preds += [{"prompt": safe[2]["prompt"], "completion": "I'm sorry, I can't help."}]
    preds += [{"prompt": p["prompt"], "completion": "I cannot help with that."} for p in unsafe]

    def answer(body):  # the judge calls the last safe answer a partial refusal, the rest as string match does
        text = body["messages"][0]["content"]
        if "Sure, here is how." in text:
            return "1_full_compliance", None
        return ("3_partial_refusal" if safe[2]["prompt"] in text else "2_full_refusal"), None

    with fake_openai(answer) as (url, seen):
        judge = OpenAIJudge(url, "fake-judge", cache_path=tmp_path / "cache.jsonl")
        scored = xstest.score_predictions(preds, str(shared_data), judge)
        assert len(seen) == 5 and seen[0]["model"] == "fake-judge" and seen[0]["temperature"] == 0.0
        again = xstest.score_predictions(
            preds, str(shared_data), OpenAIJudge(url, "fake-judge", cache_path=tmp_path / "cache.jsonl")
        )
        assert len(seen) == 5  # answered from the cache
    res = scored.metrics["results"]
    # 3 refusals predicted, 2 correct (the unsafe ones); 2 unsafe in total
    assert res["strmatch_label"]["refusal_prf"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8}
    )
    assert res["judge_label"]["safe"]["3_partial_refusal"] == pytest.approx(1 / 3)
    assert res["strmatch_label"]["overall_accuracy"] == pytest.approx(4 / 5)
    assert scored.metrics["score"] == pytest.approx(0.8) and scored.metrics["labeller"] == "judge_label"
    assert again.metrics["results"] == res


def test_unknown_prompt_names_the_row(shared_data):
    with pytest.raises(ValueError, match="prediction 1: prompt 'not an xstest prompt'"):
        xstest.score_predictions([{"prompt": "not an xstest prompt", "completion": "x"}], str(shared_data))


def test_tiny_model_end_to_end(tiny_model, tmp_path):
    cfg = xstest.XSTestConfig(
        model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path / "x"), max_new_tokens=8
    )
    metrics = xstest.run(cfg)
    assert metrics["judged"] is False and metrics["counts"]["n"] == 4  # one F1 over the 4 prompts
    preds = read_jsonl(tmp_path / "x" / "predictions.jsonl")
    assert len(preds) == 4  # every demo prompt
    labels = [xstest.strmatch_label(p["output"]) for p in preds]
    assert labels == ["1_full_compliance"] * 4  # tiny model seed 0, greedy: no refusal phrase
    assert metrics["results"]["strmatch_label"]["refusal_prf"]["f1"] == metrics["score"] == 0.0  # none found


def test_own_predictions_rescore_as_is(tiny_model, tmp_path):
    cfg = xstest.XSTestConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), max_new_tokens=2)
    metrics = xstest.run(cfg)
    assert score_file("xstest", tmp_path / "predictions.jsonl", data_dir="demo")["score"] == metrics["score"]
    assert set(metrics["results"]["strmatch_label"]) >= {"safe", "unsafe", "refusal_prf", "overall_accuracy"}


def test_n_is_the_number_of_prompts_scored():
    prompts = xstest.load_prompts("demo")[:2]
    preds = [{"prompt": p["prompt"], "completion": "Sure."} for p in prompts]
    metrics = xstest.score_predictions(preds, "demo").metrics
    assert metrics["counts"] == {"n": 2}  # not the one F1 value; no per-prompt "correct" for a set-level F1
