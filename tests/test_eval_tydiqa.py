"""TyDi QA GoldP: SQuAD F1, localized prompts, exemplar choice, gold answers score 1.0 in all 9 languages."""

from __future__ import annotations

import pytest

from tulu_kit.evals import tydiqa
from tulu_kit.evals.core import score_file


def test_squad_f1():
    assert (
        tydiqa.f1_score("The Mediterranean Sea!", "mediterranean sea") == 1.0
    )  # articles, case, punctuation
    assert tydiqa.f1_score("in the Mediterranean", "Mediterranean Sea") == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert tydiqa.f1_score("Paris", "London") == 0.0
    assert tydiqa.best_f1("Paris", ["London", "Paris, France"]) == pytest.approx(2 / 3)


def test_gold_answers_score_1_in_every_language(shared_data):
    langs = tydiqa.languages(str(shared_data))
    assert len(langs) == 9
    preds = [
        {"id": r["id"], "output": r["answers"][0]}
        for lang in langs
        for r in tydiqa.load_dev(str(shared_data), lang)
    ]
    scored = tydiqa.score_predictions(preds, str(shared_data))
    assert scored.metrics["counts"]["n"] == 5077 and scored.metrics["score"] == pytest.approx(1.0)
    assert set(scored.metrics["subscores"]) == set(langs)


def test_localized_prompt_and_exemplar_source(shared_data):
    dev = tydiqa.load_dev(str(shared_data), "swahili")
    demo, source = tydiqa.exemplar(str(shared_data), "swahili", dev, 42)
    assert source == "train" and demo["id"].startswith("swahili")
    text, prefix = tydiqa.build_prompt(dev[0], demo, chat=False)
    assert text.startswith("Jibu swali lifuatalo kulingana na habari") and text.count("Kifungu: ") == 2
    assert prefix == "Jibu:" and text.endswith(f"Swali: {dev[0]['question']}\n")
    fi = tydiqa.load_dev(str(shared_data), "finnish")
    assert tydiqa.exemplar(str(shared_data), "finnish", fi, 42) == (fi[0], "dev (held out)")


def test_run_on_demo_data(tiny_model, tmp_path):
    cfg = tydiqa.TydiQAConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path), max_new_tokens=5)
    metrics = tydiqa.run(cfg)
    assert metrics["counts"]["n"] == 2  # the first demo item is the held-out exemplar
    assert metrics["exemplar_source"] == {"english": "dev (held out)"}
    rescored = score_file("tydiqa", tmp_path / "predictions.jsonl", data_dir="demo")
    assert (rescored["score"], rescored["counts"]) == (metrics["score"], metrics["counts"])  # two paths agree
