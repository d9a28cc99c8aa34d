"""Bad data inputs are refused before work starts, naming the file and line (tulu_kit/data/)."""

from __future__ import annotations

import gzip
import json
import signal

import pytest

from tulu_kit.data.formats import convert_rows
from tulu_kit.data.sources import DataFileError, read_file
from tulu_kit.data.stage import DataConfig, load_mixture
from tulu_kit.data.validate import BadRowError, validate_preference

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _cfg(sft: list) -> DataConfig:
    return DataConfig(sft_mixer_list=sft, preference_mixer_list=[], tokenizer="", eval_fraction=0.0)


def test_an_empty_source_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"source 'messages:.*empty\.jsonl' has no rows"):
        load_mixture(_cfg([f"messages:{empty}", 1.0]), [f"messages:{empty}", 1.0], "sft")


def test_a_mix_that_takes_nothing_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    with pytest.raises(ValueError, match="the mix is empty"):
        load_mixture(_cfg([f"messages:{path}", 0]), [f"messages:{path}", 0], "sft")
    assert len(load_mixture(_cfg([f"messages:{path}", 1]), [f"messages:{path}", 1], "sft").train) == 1


def test_a_source_whose_rows_are_all_bad_is_an_error_even_when_dropping(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"messages": []}) + "\n")
    cfg = DataConfig(
        sft_mixer_list=[f"messages:{path}", 1.0], preference_mixer_list=[], tokenizer="", on_bad_row="drop"
    )
    with pytest.raises(ValueError, match="no usable rows of 1"):
        load_mixture(cfg, cfg.sft_mixer_list, "sft")


def test_chosen_equal_to_rejected_is_refused():
    same = {"chosen": CHAT, "rejected": [CHAT[0], {"role": "assistant", "content": " hello "}]}
    with pytest.raises(
        BadRowError, match="row 3: field 'rejected': chosen and rejected responses are identical"
    ):
        validate_preference(same, source="prefs.jsonl", index=3)
    other = {"chosen": CHAT, "rejected": [CHAT[0], {"role": "assistant", "content": "go away"}]}
    assert validate_preference(other)["rejected"][-1]["content"] == "go away"


def _alarm(signum, frame):
    raise TimeoutError("oasst1 conversion hung")


def test_an_oasst1_tree_with_a_repeated_message_id_errors_instead_of_hanging():
    rows = [
        {"message_id": "a", "parent_id": None, "text": "hi", "role": "prompter"},
        {"message_id": "b", "parent_id": "a", "text": "hello", "role": "assistant"},
        {"message_id": "a", "parent_id": "b", "text": "again", "role": "prompter"},  # id of the root again
    ]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        with pytest.raises(BadRowError, match=r"row 2: field 'message_id': 'a' repeats the id of row 0"):
            convert_rows("oasst1", rows, source="oasst1.jsonl")
        dropped = convert_rows("oasst1", rows, source="oasst1.jsonl", on_bad_row="drop")
        assert [e["messages"][-1]["content"] for e in dropped.examples] == ["hello"] and len(
            dropped.dropped
        ) == 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("bad.jsonl", b'{"messages": []}\n{"messages": "\xff\xfe"}\n', r"bad\.jsonl: line 2: not UTF-8"),
        ("bad.json", b'[\n{"a": 1},\n{"b": "\xc3"}\n]', r"bad\.json: line 3: not UTF-8"),
        ("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage", r"bad\.jsonl\.gz: not a readable gzip file"),
        (
            "bad.jsonl",
            b"[" * 200_000 + b"]" * 200_000 + b"\n",
            r"bad\.jsonl: line 1: (JSON nested too deeply|not)",
        ),
        ("bad.jsonl", b'{"a": 1}\n"just a string"\n', r"bad\.jsonl: line 2: expected a JSON object, got str"),
        ("bad.json", b'{"a": 1}', r"bad\.json: expected a JSON array of rows, got dict"),
        ("bad.json", b'[\n{"a": 1},\n{"a" 2}\n]', r"bad\.json: line 3: not valid JSON"),
    ],
)
def test_unreadable_files_give_one_line_errors_naming_file_and_line(tmp_path, name, content, why):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=why) as err:
        read_file(path)
    assert "\n" not in str(err.value)


def test_a_truncated_gzip_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps({"messages": CHAT}).encode() * 50)[:-20])
    with pytest.raises(DataFileError, match="not a readable gzip file"):
        read_file(path)
