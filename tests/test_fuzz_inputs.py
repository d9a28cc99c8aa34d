"""Fuzzed inputs (hypothesis): rows, data files, prediction files and prediction stores. Each bad input is
refused with the kit's own error naming the file (a ValueError subclass), never a raw traceback or a silent
score; each good one is read or scored in full."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tulu_kit.data.formats import convert_rows
from tulu_kit.data.sources import DataFileError, read_file
from tulu_kit.data.validate import ROLES, BadRowError, validate_preference
from tulu_kit.evals import bbh, gsm8k
from tulu_kit.evals.core import PredictionError, PredictionStore, score_file

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
ROLE = st.sampled_from([*ROLES, "bot", "", None, 3])
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": st.one_of(st.text(max_size=6), JSON)}) | JSON
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
VALID_CHAT = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=2).map(
    lambda turns: [{"role": r, "content": c} for u, a in turns for r, c in (("user", u), ("assistant", a))]
)
CONVERSATION = VALID_CHAT | st.lists(MESSAGE, max_size=4) | JSON
QUESTIONS = [e["question"] for e in gsm8k.load_examples("demo")]
BBH_INPUTS = [e["input"] for e in bbh.load_task("demo", "boolean_expressions")]


_SCRATCH = tempfile.TemporaryDirectory(prefix="tulu-fuzz-")  # removed when the test session ends


def _scratch(name: str) -> Path:
    return Path(tempfile.mkdtemp(dir=_SCRATCH.name)) / name


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"messages": CONVERSATION}) | JSON, max_size=4))
def test_sft_rows_are_validated_or_refused_by_row(rows):
    try:
        out = convert_rows("messages", rows, source="fuzz.jsonl")
    except BadRowError as e:
        assert str(e).startswith("fuzz.jsonl: row ")
        event("refused")
        return
    event("accepted")
    for ex in out.examples:  # accepted: every message is a known role with text
        assert all(
            m["role"] in ROLES and isinstance(m["content"], str) and m["content"].strip()
            for m in ex["messages"]
        )


@FUZZ
@given(chosen=CONVERSATION, last=st.one_of(st.text(max_size=6), JSON))
def test_preference_rows_are_validated_or_refused(chosen, last):
    rejected = (chosen[:-1] if isinstance(chosen, list) else []) + [{"role": "assistant", "content": last}]
    try:
        pair = validate_preference({"chosen": chosen, "rejected": rejected}, source="prefs.jsonl", index=0)
    except BadRowError as e:
        assert str(e).startswith("prefs.jsonl: row 0: ")
        event("refused")
        return
    event("accepted")
    assert pair["chosen"][-1]["content"].strip() != pair["rejected"][-1]["content"].strip()


@FUZZ
@given(
    lines=st.lists(
        st.binary(max_size=30) | JSON.map(lambda v: json.dumps(v).encode()) | st.just(b"\xff\xfe"), max_size=5
    ),
    suffix=st.sampled_from([".jsonl", ".json", ".jsonl.gz"]),
)
def test_data_files_are_read_or_refused_naming_the_file(lines, suffix):
    path = _scratch("rows" + suffix)
    path.write_bytes(b"\n".join(lines))
    try:
        rows = read_file(path)
    except DataFileError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        event("refused")
        return
    event("accepted")
    assert isinstance(rows, list) and (suffix == ".json" or all(isinstance(r, dict) for r in rows))


GOOD_PREDICTION = st.fixed_dictionaries(
    {"question": st.sampled_from(QUESTIONS), "output": st.text(max_size=10)}
)
PREDICTION = GOOD_PREDICTION | st.fixed_dictionaries(
    {"question": st.sampled_from(QUESTIONS) | JSON, "output": st.text(max_size=10) | JSON},
    optional={"id": JSON, "extra": JSON},
)


@FUZZ
@given(
    records=st.lists(PREDICTION | JSON, min_size=1, max_size=5), garbage=st.none() | st.binary(max_size=12)
)
def test_gsm8k_predictions_are_scored_in_full_or_refused_naming_the_file(records, garbage):
    path = _scratch("predictions.jsonl")
    lines = [json.dumps(r).encode() for r in records] + ([garbage] if garbage is not None else [])
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        metrics = score_file("gsm8k", path, data_dir="demo")
    except PredictionError as e:
        assert str(path) in str(e)
        event("refused")
        return
    event("accepted")
    # scored: every record was an object with a known question and a text output, each question once
    assert all(isinstance(r, dict) and isinstance(r.get("output"), str) for r in records)
    assert len(
        {json.dumps({k: v for k, v in r.items() if k != "output"}, sort_keys=True) for r in records}
    ) == len(records)
    assert metrics["counts"]["n"] == len(records)
    assert metrics["score"] == metrics["counts"]["correct"] / len(records)
    assert (
        0 <= metrics["counts"]["correct"] <= sum(r["output"].strip() != "" for r in records)
    )  # empty is wrong


@FUZZ
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {
                "task": st.sampled_from(["boolean_expressions"]) | JSON,
                "input": st.sampled_from(BBH_INPUTS) | JSON,
            },
            optional={"output": st.text(max_size=10) | JSON, "id": JSON},
        ),
        min_size=1,
        max_size=4,
    )
)
def test_bbh_predictions_are_scored_in_full_or_refused_naming_the_file(records):
    path = _scratch("bbh.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        metrics = score_file("bbh", path, data_dir="demo")
    except PredictionError as e:
        assert str(path) in str(e)
        event("refused")
        return
    event("accepted")
    assert metrics["counts"]["n"] == len(records)
    assert all(isinstance(r["output"], str) for r in records)


@FUZZ
@given(lines=st.lists(st.binary(max_size=20) | JSON.map(lambda v: json.dumps(v).encode()), max_size=5))
def test_a_prediction_store_resumes_or_refuses_naming_the_file(lines):
    path = _scratch("predictions.jsonl")
    path.write_bytes(b"\n".join(lines))
    try:
        store = PredictionStore(path)
    except ValueError as e:
        assert str(e).startswith(f"{path}:")
        event("refused")
        return
    event("accepted")
    store.append([{"id": "__new__", "output": "x"}])  # whatever was kept, the next append stays readable
    assert "__new__" in PredictionStore(path)
