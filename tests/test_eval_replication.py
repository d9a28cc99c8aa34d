"""Scores a researcher can cite: open-instruct's own subsets, resume keyed on the model evaluated, a manifest that
regenerates an eval, one prediction per benchmark item."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import random
import shutil

import pytest

from tulu_kit.evals import bbh, core, gsm8k, math, mmlu, tydiqa
from tulu_kit.io import read_json, read_jsonl, write_jsonl


class FakeTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split(" ")}

    def decode(self, ids):
        return " ".join(ids)


class FakeBackend:
    """Answers "0" to everything; enough to run a benchmark's example selection and scoring."""

    tokenizer = FakeTokenizer()

    def generate(self, prompts, params):
        return ["0"] * len(prompts)

    def choice_logprobs(self, prompts, choices):
        return [[0.0] * len(choices) for _ in prompts]


@pytest.fixture
def global_random():
    state = random.getstate()  # open-instruct's code seeds the global generator
    yield
    random.setstate(state)


def _ran(out_dir) -> list[dict]:
    return read_jsonl(out_dir / "predictions.jsonl")


def test_gsm8k_and_math_subsets_are_open_instructs(shared_data, tmp_path, global_random):
    from ref_open_instruct import gsm_sample, math_sample

    cfg = gsm8k.GSM8KConfig(model="unused", data_dir=str(shared_data), out_dir=str(tmp_path / "g"))
    assert cfg.subset == "open-instruct" and cfg.max_examples == 200  # the default
    gsm8k.run(cfg, backend=FakeBackend())
    theirs = {r["question"] for r in gsm_sample(str(shared_data / "gsm8k"))}
    ours = _ran(tmp_path / "g")
    assert len(ours) == 200 and {r["question"] for r in ours} == theirs
    recorded = read_json(tmp_path / "g" / "metrics.json")["manifest"]["subset"]
    assert recorded["rule"] == "open-instruct" and sorted(recorded["ids"]) == sorted(r["id"] for r in ours)
    # the kit's nested draw is another sample (what the README used to call "open-instruct's subset")
    nested = core.take(gsm8k.load_examples(str(shared_data)), 200, 42)
    assert len({e["question"] for e in nested} & theirs) < 20

    math.run(math.MATHConfig(model="unused", data_dir=str(shared_data), out_dir=str(tmp_path / "m")),
             backend=FakeBackend())  # fmt: skip
    problems = [{"question": e["problem"]} for e in math.load_examples(str(shared_data))]
    assert {r["problem"] for r in _ran(tmp_path / "m")} == {r["question"] for r in math_sample(problems)}


def test_bbh_subset_is_open_instructs(shared_data, tmp_path, global_random):
    from ref_open_instruct import bbh_sample

    bbh.run(
        bbh.BBHConfig(model="unused", data_dir=str(shared_data), out_dir=str(tmp_path)), backend=FakeBackend()
    )
    theirs = {
        (t, e["input"], e["target"]) for t, rows in bbh_sample(str(shared_data / "bbh")).items() for e in rows
    }
    ours = {(r["task"], r["input"], r["target"]) for r in _ran(tmp_path)}
    assert len(ours) == 27 * 40 and ours == theirs


def test_tydiqa_subset_is_open_instructs(shared_data, tmp_path, global_random):
    from ref_open_instruct import tydiqa_sample

    merged = {"data": []}  # the per-language files, back in one dev file (languages in sorted order)
    for path in sorted((shared_data / "tydiqa_goldp" / "dev").glob("*.json")):
        merged["data"] += json.loads(path.read_text(encoding="utf-8"))["data"]
    theirs = {e["id"] for e in tydiqa_sample(merged)}
    tydiqa.run(tydiqa.TydiQAConfig(model="unused", data_dir=str(shared_data), out_dir=str(tmp_path)),
               backend=FakeBackend())  # fmt: skip
    ours = {r["id"] for r in _ran(tmp_path)}
    exemplars = read_json(tmp_path / "metrics.json")["exemplar_source"]
    # a language without a train file holds its first dev item out as the exemplar: the only difference allowed
    assert ours <= theirs and len(theirs - ours) <= sum("dev" in str(s) for s in exemplars.values())
    assert len(ours) >= 9 * 100 - 6


def test_mmlu_subset_is_open_instructs(shared_data, tmp_path):
    import pandas as pd

    cfg = mmlu.MMLUConfig(model="unused", data_dir=str(shared_data), out_dir=str(tmp_path),
                          subset="open-instruct,abstract_algebra,anatomy", max_examples=10)  # fmt: skip
    mmlu.run(cfg, backend=FakeBackend())
    ours = [r["question"] for r in _ran(tmp_path)]
    theirs = []
    for s in ("abstract_algebra", "anatomy"):  # open-instruct: test_df.sample(n_instances, random_state=42)
        df = pd.read_csv(shared_data / "mmlu" / "test" / f"{s}_test.csv", header=None)[1:].reset_index(
            drop=True
        )
        theirs += list(df.sample(10, random_state=42)[0])  # (this copy has a header row: dropped first)
    assert sorted(ours) == sorted(theirs) and len(ours) == 20


def _lab(tmp_path, seed: int, stages: list[str]):
    """A run folder like ../runs/lab: config.yaml names the stages, each stage folder holds model/."""
    from tulu_kit.models import build_tiny_model

    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    (lab / "config.yaml").write_text("stages:\n" + "".join(f"  {s}: {{}}\n" for s in stages))
    if not (lab / stages[-1] / "model").is_dir():
        build_tiny_model(lab / stages[-1] / "model", seed=seed)
    return lab


def test_resume_after_a_new_stage_trained_starts_fresh_instead_of_appending(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = _lab(tmp_path, 0, ["sft"])
    cfg = gsm8k.GSM8KConfig(model=str(lab), data_dir="demo", out_dir=str(tmp_path / "eval"), max_new_tokens=4)
    first = gsm8k.run(cfg)
    assert first["manifest"]["model"]["resolved"] == str(lab / "sft" / "model")
    before = (tmp_path / "eval" / "predictions.jsonl").read_bytes()
    n = len(before.splitlines())
    _lab(tmp_path, 1, ["sft", "dpo"])  # a new stage trained since: the run folder now means dpo/model
    second = gsm8k.run(cfg)
    assert second["manifest"]["model"]["resolved"] == str(lab / "dpo" / "model")
    assert second["manifest"]["model"]["fingerprint"] != first["manifest"]["model"]["fingerprint"]
    after = (tmp_path / "eval" / "predictions.jsonl").read_bytes()
    assert len(after.splitlines()) == n and after != before  # the new model's outputs only, nothing appended
    (stale,) = (tmp_path / "eval").glob("predictions.stale-*.jsonl")
    assert stale.read_bytes() == before  # the old model's file is kept aside, not lost
    with pytest.raises(ValueError, match="never appended"):  # another protocol is still refused
        gsm8k.run(dataclasses.replace(cfg, n_shot=2))


def test_an_eval_reruns_from_its_manifest_alone(tiny_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    cfg = gsm8k.GSM8KConfig(model=str(model), data_dir="demo", out_dir=str(tmp_path / "a"), max_new_tokens=6)
    metrics = gsm8k.run(cfg)
    man = metrics["manifest"]
    assert man["model"]["fingerprint"].startswith("sha256:") and man["scorer_versions"]["lm-eval"]
    assert man["runtime"]["dtype"] == "float32" and man["runtime"]["device"] == "cpu"
    assert man["runtime"]["truncated"] == 0 and man["runtime"]["tokenizer_sha256"]
    assert man["subset"]["ids"] == [r["id"] for r in read_jsonl(tmp_path / "a" / "results.jsonl")]
    again = core.rerun(tmp_path / "a" / "metrics.json", tmp_path / "b")
    assert [r["output"] for r in _ran(tmp_path / "b")] == [r["output"] for r in _ran(tmp_path / "a")]
    assert again["score"] == metrics["score"]
    from tulu_kit.models import build_tiny_model

    shutil.rmtree(model)
    build_tiny_model(model, seed=3)  # other weights at the same path
    with pytest.raises(ValueError, match="other weights"):
        core.rerun(tmp_path / "a" / "metrics.json", tmp_path / "c")


def test_score_refuses_two_predictions_of_one_item(shared_data, tmp_path):
    q = gsm8k.load_examples(str(shared_data))[5]["question"]
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [
        {"question": gsm8k.load_examples(str(shared_data))[4]["question"], "output": "1"},
        {"question": q, "output": "1", "id": 5},
        {"question": q + "  ", "output": "2", "id": "5", "meta": {"run": 2}},  # same item, other fields differ
    ])  # fmt: skip
    with pytest.raises(
        core.PredictionError, match=r"p.jsonl: line 3: predicts benchmark item '5' again \(first on line 2\)"
    ):
        core.score_file("gsm8k", path, data_dir=str(shared_data))


def test_bootstrap_stderr_matches_the_binomial_one_for_a_mean():
    items = [1.0] * 200 + [0.0] * 200
    se = core.bootstrap_stderr(items, lambda xs: sum(xs) / len(xs))
    assert se == pytest.approx((0.25 / 400) ** 0.5, rel=0.1)  # 0.025
    assert core.bootstrap_stderr(items, lambda xs: sum(xs) / len(xs)) == se  # seeded


def test_xstest_f1_has_a_bootstrap_error_bar(shared_data, tmp_path):
    import csv

    from tulu_kit.evals import xstest

    path = (
        shared_data / "xstest/evaluation/automated_evaluation_labels/xstest_v2_completions_gpt4_streval.csv"
    )
    prompt = {p["id"]: p["prompt"] for p in xstest.load_prompts(str(shared_data))}
    with open(path, newline="", encoding="utf-8") as f:
        preds = [
            {"prompt": prompt[r["id"].removeprefix("v2-")], "completion": r["completion"]}
            for r in csv.DictReader(f)
        ]
    m = xstest.score_predictions(preds, str(shared_data)).metrics
    assert m["counts"]["n"] == 450 and 0.005 < m["stderr"] < 0.05  # not the 0 a single F1 value would give


def test_manifest_names_the_judge_and_the_classifier_weights(tiny_model):
    man = core.eval_manifest("toxigen", {"classifier": str(tiny_model), "counts": {"n": 3}})
    assert man["judge"]["classifier"] == str(tiny_model)
    assert man["judge"]["revisions"][str(tiny_model)] == core.model_fingerprint(str(tiny_model))
    assert man["judge"]["revisions"][str(tiny_model)].startswith("sha256:")
    man = core.eval_manifest("xstest", {"judge": "gpt-4", "judge_endpoint": "http://j/v1/chat/completions"})
    assert man["judge"] == {
        "judge": "gpt-4",
        "judge_endpoint": "http://j/v1/chat/completions",
        "revisions": {},
    }
    assert man["kit_commit"] and man["scorer_versions"]["lm-eval"] == importlib.metadata.version("lm-eval")
