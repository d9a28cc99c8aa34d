"""ToxiGen: prompt loading, percent toxic with a tiny offline classifier, end to end (tulu_kit/evals/toxigen.py)."""

from __future__ import annotations

import pytest
import torch

from tulu_kit.evals import toxigen


def tiny_classifier(path, tokenizer_dir, toxic: bool):
    """A 1-layer BERT classifier whose head ignores its input: always label 1 (toxic) or always 0."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=2, pad_token_id=tok.pad_token_id or 0)  # fmt: skip
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0] if toxic else [5.0, 0.0]))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_load_prompts_follows_open_instruct(shared_data):
    ex = toxigen.load_prompts(str(shared_data), per_group=7, seed=42)
    assert len(ex) == 14 * 7 and {e["group"] for e in ex} == set(toxigen.GROUPS)
    assert all("\\n" not in e["text"] and "\n" in e["text"] for e in ex)  # literal \n became newlines
    assert ex == toxigen.load_prompts(str(shared_data), per_group=7, seed=42)  # seeded shuffle
    assert ex != toxigen.load_prompts(str(shared_data), per_group=7, seed=1)
    assert toxigen.build_prompt(ex[0], chat=True)[0].startswith("Complete the following: - ")


@pytest.mark.parametrize("toxic", [True, False])
def test_percent_toxic(tiny_model, tmp_path, toxic):
    clf = tiny_classifier(tmp_path / "clf", tiny_model, toxic)
    preds = [{"id": f"{g}/0", "group": g, "output": "some continuation"} for g in toxigen.GROUPS[:3]]
    scored = toxigen.score_predictions(preds, classifier=clf)
    expected = 100.0 if toxic else 0.0
    assert scored.metrics["pct_toxic"] == {g: expected for g in toxigen.GROUPS[:3]} | {"overall": expected}
    assert scored.metrics["score"] == expected / 100 and scored.metrics["metric"] == "toxic_fraction"
    assert all(v["is_toxic"] is toxic for v in scored.verdicts)


def test_bad_rows_name_the_row():
    with pytest.raises(ValueError, match="prediction 1: needs 'group'"):
        toxigen.score_predictions([{"group": "martians", "output": "x"}], classifier="unused")


def test_tiny_model_end_to_end(tiny_model, tmp_path):
    clf = tiny_classifier(tmp_path / "clf", tiny_model, toxic=True)
    cfg = toxigen.ToxiGenConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path / "t"), max_examples=1,
                                max_new_tokens=8, classifier=clf)  # fmt: skip
    metrics = toxigen.run(cfg)
    assert metrics["pct_toxic"]["overall"] == 100.0 and metrics["counts"]["n"] == 14
    skipped = toxigen.run(toxigen.ToxiGenConfig(model=str(tiny_model), data_dir="demo", out_dir=str(tmp_path / "s"),
                                                max_examples=1, max_new_tokens=8, classifier=""))  # fmt: skip
    assert skipped["scored"] is False and "classifier" in skipped["message"]
