"""The eval core: HF + vLLM backends, chat prompts, resumable predictions, metrics, registry, CLI, notebooks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

from tulu_kit.evals import core
from tulu_kit.evals.backends import GenParams, HFBackend, cut_at_stop
from tulu_kit.evals.data import MissingDataError, data_root, require_file

BENCHMARKS = ["gsm8k", "math", "mmlu", "bbh", "tydiqa", "truthfulqa"]


@pytest.fixture(scope="module")
def backend(tiny_model):
    return HFBackend.load(str(tiny_model), batch_size=4)


PROMPTS = ["Question: What is 2+2?\nAnswer:", "Hello", "The capital of France is a city that", "x y z"]


def test_batched_generation_matches_one_at_a_time(backend):
    params = GenParams(max_new_tokens=12)
    batched = backend.generate(PROMPTS, params)
    single = [backend.generate([p], params)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) == len(PROMPTS)  # different prompts, different continuations: rows not mixed up


def test_stop_strings_cut_the_output(backend):
    free = backend.generate(PROMPTS, GenParams(max_new_tokens=24))
    stop = next(ch for ch in free[0][2:] if ch.strip())  # a character the model does emit
    cut = backend.generate(PROMPTS[:1], GenParams(max_new_tokens=24, stop=(stop,)))[0]
    assert stop not in cut and free[0].startswith(cut) and len(cut) < len(free[0])
    assert cut_at_stop("a\n\nQ: b", ("\n\n", "Q:")) == "a"


def test_loglikelihood_is_the_sum_of_token_logprobs(backend, tiny_model):
    reqs = [("Question: hi", " there friend"), ("a", "b c"), ("The answer is ", "B")]
    batched = backend.loglikelihood(reqs)
    backend.batch_size = 1
    try:
        single = backend.loglikelihood(reqs)
    finally:
        backend.batch_size = 4
    for (b, nb), (s, ns) in zip(batched, single):
        assert nb == ns and b == pytest.approx(s, abs=1e-4)
    ctx, cont = backend.encode_pair(*reqs[0])
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(backend.model(ids).logits[0].float(), -1)
    manual = sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert batched[0][0] == pytest.approx(manual, abs=1e-4)
    assert (
        backend.encode_pair("The answer is ", "B")[1]
        == backend.tokenizer(" B", add_special_tokens=False)["input_ids"]
    )  # the trailing space moves to the continuation, as lm-eval does


def test_choice_logprobs_match_single_token_loglikelihood(backend):
    choices = ["A", "B", "C", "D"]
    lp = backend.choice_logprobs(["Answer:", "Q: x\nAnswer:"], choices)
    ll = backend.loglikelihood([("Answer:", " " + c) for c in choices])
    assert lp[0] == pytest.approx([s for s, _ in ll], abs=1e-4)
    assert lp[0] != lp[1]


def test_chat_prompt_and_few_shot(backend):
    text = core.chat_prompt(backend.tokenizer, "Hi?", True, "Answer:")
    assert text.endswith("<|user|>\nHi?\n<|assistant|>\nAnswer:")
    assert core.chat_prompt(backend.tokenizer, "Hi?\n", False, "Answer:") == "Hi?\nAnswer:"
    assert backend.encode(text).count(backend.tokenizer.bos_token_id) == 1  # BOS added once
    assert core.few_shot(["Q: 1\nA: 2"], "Q: 3\nA:", header="H") == "H\n\nQ: 1\nA: 2\n\nQ: 3\nA:"


def test_prediction_store_resumes_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    store = core.PredictionStore(path)
    store.append([{"id": "a", "output": "1"}, {"id": "b", "output": "2"}])
    with open(path, "a") as f:
        f.write('{"id": "c", "outp')  # killed mid-write
    again = core.PredictionStore(path)
    assert len(again) == 2 and "c" not in again and again["b"]["output"] == "2"
    assert path.read_text().endswith("\n")
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="predictions.jsonl:2"):
        core.PredictionStore(path)


class Interrupted(Exception):
    pass


def test_predict_resumes_without_redoing_finished_examples(tmp_path):
    cfg = core.EvalConfig(model="unused", out_dir=str(tmp_path), batch_size=2)
    examples = [{"id": str(i), "x": i} for i in range(5)]
    seen, crash = [], [True]

    def compute(be, chunk):
        seen.extend(e["id"] for e in chunk)
        if crash[0] and len(seen) > 2:
            raise Interrupted  # killed during the second chunk
        return [{**e, "y": e["x"] * 10} for e in chunk]

    with pytest.raises(Interrupted):
        core.predict(cfg, examples, compute, backend=object())
    seen.clear()
    crash[0] = False
    out = core.predict(cfg, examples, compute, backend=object())
    assert [r["y"] for r in out] == [0, 10, 20, 30, 40]
    assert sorted(set(seen)) == ["2", "3", "4"]  # the first chunk was not redone
    with pytest.raises(ValueError, match="other settings"):
        core.predict(dataclasses.replace(cfg, chat=True), examples, compute, backend=object())


def test_predict_never_reuses_an_answer_to_another_question_under_the_same_id(tmp_path, caplog):
    """The benchmark's files rewritten between two runs (another seed or size of the toy world, another few-shot
    exemplar): the same ids now ask other questions, so the old file is moved aside and every example answered
    again, not resumed."""
    cfg = core.EvalConfig(model="unused", out_dir=str(tmp_path), batch_size=2)
    seen = []

    def compute(be, chunk):
        seen.extend(e["id"] for e in chunk)
        return [{**e, "y": e["x"] * 10} for e in chunk]

    old = [{"id": str(i), "x": i} for i in range(4)]
    core.predict(cfg, old, compute, backend=object())
    before = (tmp_path / "predictions.jsonl").read_text()
    seen.clear()
    assert [r["y"] for r in core.predict(cfg, old, compute, backend=object())] == [0, 10, 20, 30] and not seen
    new = [{"id": str(i), "x": i + (i == 2)} for i in range(4)]  # one question changed
    out = core.predict(cfg, new, compute, backend=object())
    assert [r["y"] for r in out] == [0, 10, 30, 30] and sorted(seen) == ["0", "1", "2", "3"]
    (stale,) = tmp_path.glob("predictions.stale-*.jsonl")
    assert stale.read_text() == before and "now ask another question, '2' first" in caplog.text
    assert all(r[core.EXAMPLE_KEY] == core.example_digest(e) for r, e in zip(out, new))
    # the same items under another exemplar (the prompt as built): answered again, the set-aside names distinct
    seen.clear()
    core.predict(cfg, new, compute, backend=object(), prompt_of=lambda e: ("exemplar B", e["x"]))
    assert len(seen) == 4 and len(list(tmp_path.glob("predictions.stale-*.jsonl"))) == 2


def test_predictions_from_before_the_digest_resume_only_where_they_carry_their_question(tmp_path, caplog):
    cfg = core.EvalConfig(model="unused", out_dir=str(tmp_path), batch_size=2)
    seen = []

    def compute(be, chunk):
        seen.extend(e["id"] for e in chunk)
        return [{**e, "y": e["x"] * 10} for e in chunk]

    core.predict(cfg, [{"id": "0", "x": 0}], compute, backend=object())
    preds = tmp_path / "predictions.jsonl"
    old = {"id": "0", "x": 7, "y": 70}  # written before the digest: its fields say which question it answered
    preds.write_text(json.dumps(old) + "\n")
    seen.clear()
    assert core.predict(cfg, [{"id": "0", "x": 7}], compute, backend=object())[0]["y"] == 70 and not seen
    assert core.predict(cfg, [{"id": "0", "x": 8}], compute, backend=object())[0]["y"] == 80 and seen == ["0"]
    assert "predate question digests" in caplog.text


def test_example_digest_is_the_same_in_another_process_whatever_its_string_hashing():
    import subprocess
    import sys

    code = (
        "from tulu_kit.evals import core; print(core.example_digest({'id': 'a', 's': {'x', 'y', 'z', 'w'}}))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout  # fmt: skip
        for seed in (1, 2, 3, 4)
    }
    assert len(digests) == 1


def test_metrics_score_stderr_and_macro():
    m = core.make_metrics("b", "acc", [1, 0, 1, 1], {"p": 1})
    assert (
        m["score"] == 0.75
        and m["stderr"] == pytest.approx(math.sqrt(0.25 / 4))
        and m["counts"]["correct"] == 3
    )
    g = core.make_metrics(
        "b", "acc", [1, 1, 0, 1, 0, 0], {}, groups={"x": [1, 1], "y": [0, 1, 0, 0]}, macro=True
    )
    assert g["score"] == pytest.approx((1.0 + 0.25) / 2) and g["subscores"] == {"x": 1.0, "y": 0.25}
    small, big = core.take(list(range(10)), 3, 1), core.take(list(range(10)), 5, 1)
    assert len(small) == 3 and set(small) <= set(big)  # raising max_examples keeps what was done


def test_resolve_model_from_run_folder(tmp_path):
    for stage in ("quickstart", "sft", "dpo"):
        (tmp_path / stage / "model").mkdir(parents=True)
        (tmp_path / stage / "model" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "config.yaml").write_text(
        "stages:\n  quickstart: {}\n  sft: {}\n  dpo: {}\n  eval_gsm8k: {}\n"
    )
    assert core.resolve_model(tmp_path) == str(tmp_path / "dpo" / "model")
    assert core.resolve_model(tmp_path / "sft") == str(tmp_path / "sft" / "model")
    assert core.resolve_model("allenai/tulu-2-7b") == "allenai/tulu-2-7b"  # a Hub id passes through
    with pytest.raises(FileNotFoundError):
        core.resolve_model(tmp_path / "eval_gsm8k")


def test_data_root_and_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_KIT_DATA", str(tmp_path))
    assert data_root(None) == tmp_path and data_root("x") == Path("x")
    monkeypatch.delenv("TULU_KIT_DATA")
    assert data_root(None) == Path.home() / ".cache" / "tulu_kit" / "data"
    with pytest.raises(MissingDataError, match=r"gsm8k/test.jsonl.*tulu-kit data prepare-eval --only gsm8k"):
        require_file(tmp_path, "gsm8k/test.jsonl", "gsm8k")


def test_registry():
    assert set(BENCHMARKS) <= set(core.list_benchmarks())
    assert core.get_benchmark("math500").NAME == "math"
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        core.get_benchmark("nope")


def test_cli_score_and_eval(tmp_path, tiny_model, capsys):
    from tulu_kit.cli import main

    preds = tmp_path / "p.jsonl"
    rows = [
        json.loads(line) for line in (data_root("demo") / "gsm8k" / "test.jsonl").read_text().splitlines()
    ]
    outputs = [rows[0]["answer"], "no idea", rows[2]["answer"], "-5"]
    preds.write_text(
        "".join(json.dumps({"question": r["question"], "output": o}) + "\n" for r, o in zip(rows, outputs))
    )
    assert (
        main(
            [
                "score",
                "gsm8k",
                "--predictions",
                str(preds),
                "--out",
                str(tmp_path / "s"),
                "--data-dir",
                "demo",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["score"] == 0.75 and printed["counts"] == {"n": 4, "correct": 3}
    verdicts = [json.loads(line) for line in (tmp_path / "s" / "results.jsonl").read_text().splitlines()]
    assert [v["correct"] for v in verdicts] == [True, False, True, True]
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["score"] == 0.75
    out = tmp_path / "e"
    args = [
        "eval",
        "gsm8k",
        "--model",
        str(tiny_model),
        "--data-dir",
        "demo",
        "--max-examples",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "metrics.json").read_text())
    rescored = core.score_file("gsm8k", out / "predictions.jsonl", data_dir="demo")
    assert (
        saved["counts"] == rescored["counts"] and saved["score"] == rescored["score"]
    )  # two paths, one score
    assert saved["counts"]["n"] == 2
    assert main(["score", "gsm8k", "--predictions", str(tmp_path / "missing.jsonl")]) == 2


def test_prepare_eval_lays_out_every_source_like_the_shared_folder(tmp_path, monkeypatch):
    """With downloads faked, prepare-eval writes each benchmark where its loader looks (punkt unzipped)."""
    import io
    import zipfile

    from tulu_kit.evals import data

    def fake_fetch(url: str) -> bytes:
        if url.endswith("punkt_tab.zip"):
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as z:
                z.writestr("punkt_tab/english/collocations.tab", "x")
            return buffer.getvalue()
        return b"payload " + url.encode()

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    only = ["gsm8k", "humaneval", "humaneval_plus", "mbpp_plus", "ifeval", "toxigen", "xstest", "alpaca_eval"]
    root = data.prepare_eval(str(tmp_path), only=only)
    for rel in [
        "gsm8k/test.jsonl",
        "humaneval/HumanEval.jsonl.gz",
        "humaneval/HumanEvalPlus.jsonl.gz",
        "mbpp/MbppPlus.jsonl.gz",
        "ifeval/input_data.jsonl",
        "toxigen/prompts/hate_women_1k.txt",
        "xstest/xstest_prompts.csv",
        "alpaca_eval/results/gpt4_1106_preview/model_outputs.json",
    ]:
        assert (root / rel).read_bytes().startswith(b"payload https://"), rel
    assert (root / "nltk_data/tokenizers/punkt_tab/english/collocations.tab").read_text() == "x"
    assert len(list((root / "toxigen/prompts").iterdir())) == 14


def test_prediction_store_names_a_record_without_id(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a"}\n{"output": "no id"}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: .*'id'"):
        core.PredictionStore(path)


def test_finish_logs_an_unscored_run(tmp_path, caplog):
    """A run with no judge / classifier has score None; finish must not log it with "%.4f" (TypeError)."""
    cfg = core.EvalConfig(model="m", out_dir=str(tmp_path))
    scored = core.Scored(core.make_metrics("toxigen", "toxic_fraction", [], {}), [])
    with caplog.at_level("INFO", logger="tulu_kit.evals.core"):
        metrics = core.finish(cfg, scored)
    assert metrics["score"] is None
    assert any("not scored" in r.getMessage() for r in caplog.records)


def test_cli_eval_keeps_the_benchmarks_chat_default(monkeypatch):
    """`tulu-kit eval humaneval` without --chat runs the protocol's chat format; --chat / --no-chat override it."""
    import tulu_kit.evals
    from tulu_kit.cli import main

    calls = []
    monkeypatch.setattr(tulu_kit.evals, "evaluate", lambda name, **kw: calls.append(kw) or {"score": 0})
    for flag in ([], ["--chat"], ["--no-chat"]):
        assert main(["eval", "humaneval", "--model", "m", *flag]) == 0
    assert "chat" not in calls[0] and calls[1]["chat"] is True and calls[2]["chat"] is False


def test_prepare_eval_never_leaves_a_partial_folder(tmp_path, monkeypatch):
    """An unpack that dies half way leaves no folder, so the next run fetches again instead of skipping it."""
    from tulu_kit.evals import data

    monkeypatch.setattr(data, "_fetch", lambda url: b"archive")

    def dies_half_way(payload, dest, name=""):
        data._write(dest / "dev" / "a_dev.csv", b"q,a,b,c,d,A\n")
        raise OSError("connection reset")

    monkeypatch.setitem(data.UNPACK, "mmlu", dies_half_way)
    with pytest.raises(OSError):
        data.prepare_eval(str(tmp_path), only=["mmlu"])
    assert not (tmp_path / "mmlu").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_prepare_eval_splits_tydiqa_per_language(tmp_path, monkeypatch):
    from tulu_kit.evals import data

    def article(qid):
        return {"paragraphs": [{"context": "c", "qas": [{"id": qid, "question": "q", "answers": []}]}]}

    payload = json.dumps({"data": [article("english-1"), article("finnish-2")]}).encode()
    monkeypatch.setattr(data, "_fetch", lambda url: payload)
    data.prepare_eval(str(tmp_path), only=["tydiqa"])
    assert sorted(p.name for p in (tmp_path / "tydiqa_goldp" / "dev").iterdir()) == [
        "english_tydiqa_dev.json",
        "finnish_tydiqa_dev.json",
    ]
    assert sorted(p.name for p in (tmp_path / "tydiqa_goldp" / "train").iterdir()) == [
        "english_tydiqa_train.json",
        "finnish_tydiqa_train.json",
    ]
    english = json.loads((tmp_path / "tydiqa_goldp" / "train" / "english_tydiqa_train.json").read_text())
    assert english == {"data": [article("english-1")]}  # only the English article, unchanged


def test_a_corrupt_whole_file_benchmark_names_file_and_line(tmp_path):
    from tulu_kit.evals import bbh

    folder = tmp_path / "bbh" / "bbh"
    folder.mkdir(parents=True)
    (folder / "boolean_expressions.json").write_text('{"examples": [\n  {"input": "x",\n}')
    (tmp_path / "bbh" / "cot-prompts").mkdir()
    (tmp_path / "bbh" / "cot-prompts" / "boolean_expressions.txt").write_text("-----\nQ: a\nA: b")
    with pytest.raises(ValueError, match=r"boolean_expressions\.json: line 3: not valid JSON \(.*column 1\)"):
        bbh.load_task(str(tmp_path), "boolean_expressions")


def test_close_collects_once_the_dropped_cpu_models_add_up_to_a_gib(tiny_model, monkeypatch):
    """A small CPU model is left to Python's collector; the one that brings the dropped bytes to a GiB collects, and
    the count starts again."""
    import gc

    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    monkeypatch.setattr(HFBackend, "_dropped", 0)
    first = HFBackend.load(str(tiny_model), device="cpu")  # on a GPU every close collects
    size = sum(p.numel() * p.element_size() for p in first.model.parameters())
    first.close()
    first.close()  # closed already: nothing counted twice
    assert HFBackend._dropped == size and not collections
    HFBackend._dropped = 2**30 - size
    second = HFBackend.load(str(tiny_model), device="cpu")
    second.close()
    assert collections == [1] and HFBackend._dropped == 0
