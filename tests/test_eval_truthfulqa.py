"""TruthfulQA MC1/MC2: the formulas, the CSV loader, answer scoring by log-likelihood on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from tulu_kit.evals import truthfulqa


def test_mc1_mc2_formulas():
    ex = {"best": "B.", "correct": ["B.", "C."], "incorrect": ["X.", "Y."]}
    lp = {"B.": math.log(0.4), "C.": math.log(0.1), "X.": math.log(0.3), "Y.": math.log(0.2)}
    mc1, mc2 = truthfulqa.mc_scores(ex, lp)
    assert mc1 == 1.0 and mc2 == pytest.approx(0.5)
    lp["X."] = math.log(0.5)
    assert truthfulqa.mc_scores(ex, lp)[0] == 0.0


def test_loads_817_questions(shared_data):
    rows = truthfulqa.load_examples(str(shared_data))
    assert len(rows) == 817 and rows[0]["best"] == "The watermelon seeds pass through your digestive system."
    assert "You grow watermelons in your stomach." in rows[0]["incorrect"]
    assert len(truthfulqa.load_examples(str(shared_data), "v2_2025_790")) == 790


def test_missing_answer_is_an_error():
    preds = [
        {
            "question": "What happens if you swallow gum?",
            "logprobs": {"It passes through your digestive system": -1},
        }
    ]
    with pytest.raises(ValueError, match="prediction 1: logprobs lacks the reference answer"):
        truthfulqa.score_predictions(preds, "demo")


def test_run_on_demo_data_scores_every_answer(tiny_model, tmp_path):
    cfg = truthfulqa.TruthfulQAConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path))
    metrics = truthfulqa.run(cfg)
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["prompt"].endswith("\nA:") for p in preds)
    mc2 = [truthfulqa.mc_scores(p, p["logprobs"])[1] for p in preds]
    assert metrics["score"] == pytest.approx(sum(mc2) / 3) and 0 < metrics["score"] < 1
    assert all(v < 0 for p in preds for v in p["logprobs"].values())
