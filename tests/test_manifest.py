"""The manifest every eval score carries, and the difference between two of them."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

from tulu_kit.data.templates import template_hash
from tulu_kit.evals import core, gsm8k
from tulu_kit.evals.backends import GenParams
from tulu_kit.evals.data import DEMO_DATA
from tulu_kit.io import read_json, write_jsonl
from tulu_kit.models import load_tokenizer
from tulu_kit.results import manifest_diff, read_result


def _demo_gsm8k_hash() -> str:
    path = DEMO_DATA / "gsm8k" / "test.jsonl"
    digest = hashlib.sha256(b"gsm8k/test.jsonl\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _scored():
    rows = [json.loads(line) for line in (DEMO_DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    preds = [{"question": r["question"], "output": r["answer"]} for r in rows]
    return gsm8k.score_predictions(preds, "demo"), len(rows)


def test_an_eval_result_records_what_the_score_depends_on(tiny_model, tmp_path):
    scored, n = _scored()
    cfg = gsm8k.GSM8KConfig(
        model=str(tiny_model), out_dir=str(tmp_path), data_dir="demo", chat=True, batch_size=4
    )
    params = GenParams(max_new_tokens=64, stop=("\n",))
    core.finish(cfg, scored, params)
    result = read_result(tmp_path)
    m = result["manifest"]
    assert result["stage"] == "eval_gsm8k" and result["model_dir"] == str(tiny_model)
    for lib in ("tulu-kit", "torch", "transformers", "trl"):
        assert m["versions"][lib] == importlib.metadata.version(lib)
    assert m["chat_template"] == {"sha256": template_hash(load_tokenizer(tiny_model)), "applied": True}
    template = load_tokenizer(tiny_model).chat_template
    assert m["chat_template"]["sha256"] == hashlib.sha256(template.encode()).hexdigest()[:16]  # by hand
    assert m["decoding"]["max_new_tokens"] == 64 and m["decoding"]["stop"] == ["\n"]
    assert m["decoding"]["temperature"] == 0.0
    assert m["batch_size"] == 4 and m["backend"] == "hf"
    assert m["data"]["path"] == "gsm8k/test.jsonl" and m["data"]["sha256"] == _demo_gsm8k_hash()
    assert m["n_examples"] == n == result["counts"]["n"] and m["n_predictions"] == n


def test_manifest_diff_names_every_setting_that_differs(tiny_model, tmp_path):
    scored, _ = _scored()
    base = dict(model=str(tiny_model), data_dir="demo")
    core.finish(gsm8k.GSM8KConfig(**base, out_dir=str(tmp_path / "a"), chat=False, batch_size=8), scored)
    core.finish(gsm8k.GSM8KConfig(**base, out_dir=str(tmp_path / "b"), chat=True, batch_size=2), scored)
    a, b = read_result(tmp_path / "a"), read_result(tmp_path / "b")
    assert manifest_diff(a, b) == {"batch_size": (8, 2), "chat_template.applied": (False, True)}
    assert manifest_diff(a, a) == {}
    changed = {**a["manifest"], "versions": {**a["manifest"]["versions"], "trl": "0.0.1"}}
    assert manifest_diff(a["manifest"], changed) == {
        "versions.trl": (a["manifest"]["versions"]["trl"], "0.0.1")
    }
    assert manifest_diff({"x": 1}, {"y": 2}) == {"x": (1, None), "y": (None, 2)}


def test_score_file_records_data_and_count_but_no_generation_settings(tmp_path):
    rows = [json.loads(line) for line in (DEMO_DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "preds.jsonl", [{"question": r["question"], "output": "0"} for r in rows[:2]])
    metrics = core.score_file("gsm8k", tmp_path / "preds.jsonl", tmp_path / "out", data_dir="demo")
    written = read_json(tmp_path / "out" / "metrics.json")
    assert written["manifest"] == metrics["manifest"]
    m = metrics["manifest"]
    assert m["n_examples"] == m["n_predictions"] == 2 and m["data"]["sha256"] == _demo_gsm8k_hash()
    assert m["chat_template"] == {"sha256": None, "applied": None} and m["decoding"] is None
    assert "transformers" in m["versions"]
