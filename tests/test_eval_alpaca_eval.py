"""AlpacaEval: judge protocol through a fake OpenAI-compatible endpoint, LC win rate, no-judge path."""

from __future__ import annotations

import json
import math
import random

import pytest
from fake_judge import fake_openai

from tulu_kit.evals import alpaca_eval
from tulu_kit.evals.judges import OpenAIJudge


def prefer_marked(body):
    """A judge that prefers the output containing 'GOOD', with probability 0.9."""
    user = body["messages"][1]["content"]
    first = user.split('"model_identifier": "m"')[1].split('"model_identifier": "M"')[0]
    best = "m" if "GOOD" in first else "M"
    other = "M" if best == "m" else "m"
    return best, [{"token": best, "logprob": math.log(0.9)}, {"token": other, "logprob": math.log(0.1)}]


def test_win_rate_undoes_the_random_order(shared_data, tmp_path):
    ref = alpaca_eval.load_reference(str(shared_data), 2)
    assert len(ref) == 805
    preds = [{"instruction": r["instruction"], "output": "GOOD answer"} for r in ref[:8]]
    with fake_openai(prefer_marked) as (url, seen):
        judge = OpenAIJudge(url, "fake", cache_path=tmp_path / "c.jsonl")
        scored = alpaca_eval.score_predictions(preds, str(shared_data), judge, version=2)
    assert seen[0]["max_tokens"] == 1 and seen[0]["logprobs"] is True
    assert seen[0]["messages"][0]["content"].startswith("You are a highly efficient assistant")
    firsts = ["GOOD" in b["messages"][1]["content"].split('"M"')[0] for b in seen]
    rng = random.Random(42)  # the default seed: ours goes first where the seeded coin says so
    assert firsts == [rng.random() < 0.5 for _ in preds] and 0 < sum(firsts) < len(firsts)  # both orders used
    assert scored.metrics["win_rate"] == pytest.approx(90.0)
    # alpaca_eval's own LC fit needs the Hub's df_gamed.csv: offline it is null and says why, never approximated
    assert (
        scored.metrics["length_controlled_win_rate"] is None and "df_gamed.csv" in scored.metrics["lc_error"]
    )
    assert scored.metrics["lc_method"].startswith("alpaca_eval 0.6.6 metrics.glm_winrate")
    assert scored.metrics["counts_official"] == {"n_wins": 8, "n_wins_base": 0, "n_draws": 0, "n_total": 8}
    assert scored.metrics["reference"] == "gpt4_1106_preview"


def test_no_judge_saves_outputs_with_a_message(tiny_model, tmp_path):
    cfg = alpaca_eval.AlpacaEvalConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path / "a"),
                                       max_new_tokens=8, version=1)  # fmt: skip
    metrics = alpaca_eval.run(cfg)
    assert metrics["judged"] is False and "judge_url" in metrics["message"]
    outputs = json.loads((tmp_path / "a" / "model_outputs.json").read_text())
    assert len(outputs) == 2 and set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
    with fake_openai(prefer_marked) as (url, _):
        judged = alpaca_eval.run(
            alpaca_eval.AlpacaEvalConfig(
                model=str(tiny_model),
                data_dir="demo",
                out_dir=str(tmp_path / "b"),
                max_new_tokens=8,
                judge_url=url,
            )
        )
    prefs = [json.loads(line)["preference"] for line in open(tmp_path / "b" / "results.jsonl")]
    assert judged["judged"] is True  # no GOOD in either output: the judge picks the 2nd with p = 0.9
    assert all(min(abs(x - 0.1), abs(x - 0.9)) < 1e-9 for x in prefs)
    assert judged["win_rate"] == pytest.approx(100 * sum(prefs) / len(prefs))
