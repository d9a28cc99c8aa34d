"""Tulu 3's published RLVR rows (allenai/RLVR-GSM-MATH-IF-Mixed-Constraints: GSM8K, MATH and the IFEval-constraint
``func_name`` form), built in exactly their shape, are accepted by both RL stages' loaders and scored."""

from __future__ import annotations

import json

import pytest

from tulu_kit import rewards

# every IFEval-constraint row of the dataset carries all of these keys, null where its check takes no such argument
NULLS = dict.fromkeys(["N", "quantifier", "end_phrase", "keyword_list", "word", "forbidden_words", "letter", "i",
                       "first_word", "postscript_marker", "options", "section_splitter", "original_prompt",
                       "language"])  # fmt: skip


def _if_row(func_name: str, instruction: str, **kwargs) -> dict:
    gt = json.dumps({"func_name": func_name, **NULLS, **kwargs})
    return {"messages": [{"role": "user", "content": f"Write a note to a friend. {instruction}"}],
            "ground_truth": gt, "dataset": "ifeval", "constraint_type": "x", "constraint": instruction}  # fmt: skip


ROWS = [
    {"messages": [{"role": "user", "content": "Question: Natalia sold clips to 48 of her friends in April, and then "
                   "she sold half as many clips in May. How many clips did Natalia sell altogether in April and "
                   "May?\nAnswer: Let's think step by step."}],
     "ground_truth": "72", "dataset": "gsm8k", "constraint_type": None, "constraint": None},
    {"messages": [{"role": "user", "content": "Problem:\nWhat is $\\sin 30^\\circ$?\n\nSolution:"}],
     "ground_truth": "\\frac{1}{2}", "dataset": "MATH", "constraint_type": None, "constraint": None},
    _if_row("validate_lowercase", "Your entire response should be in English, and in all lowercase letters."),
    _if_row("verify_keywords", "Include keywords tea, moon in the response.", keyword_list=["tea", "moon"]),
    _if_row("validate_word_constraint", "Answer with at least 5 words.", N=5, quantifier="at least"),
]  # fmt: skip


def test_published_row_shapes_are_accepted():
    rewards.check_rows(ROWS, "rlvr.jsonl")


@pytest.mark.parametrize(
    ("row", "completion", "expected"),
    [
        (0, "48 / 2 = 24 in May, so 48 + 24 = 72. The answer is 72.", 1.0),
        (0, "The answer is 70.", 0.0),
        (1, "So the answer is $\\boxed{\\frac{1}{2}}$.", 1.0),
        (1, "So the answer is $\\boxed{\\frac{1}{3}}$.", 0.0),
        (2, "dear sam, see you soon.", 1.0),
        (2, "Dear Sam, see you soon.", 0.0),
        (3, "Tea under the Moon tonight?", 1.0),
        (3, "Tea tonight?", 0.0),
        (4, "one two three four five", 1.0),
        (4, "one two three", 0.0),
    ],
)
def test_published_rows_are_scored(row, completion, expected):
    rewards.failure_counts(reset=True)
    assert rewards.verifiable_reward(ROWS[row], completion) == expected
    assert not rewards.failure_counts(reset=True)  # scored, not a counted failure


def test_bad_func_name_rows_name_the_line_and_key():
    bad = _if_row("validate_lowercaze", "x")
    with pytest.raises(
        ValueError, match=r"rl.jsonl: line 2: key 'ground_truth': ifeval func_name 'validate_lowercaze'"
    ):
        rewards.check_rows([ROWS[0], bad], "rl.jsonl")
    wrong_args = _if_row("verify_keywords", "x", N=3)  # verify_keywords takes keyword_list, not N
    with pytest.raises(
        ValueError, match=r"line 1: key 'ground_truth': ifeval func_name 'verify_keywords': arguments"
    ):
        rewards.check_rows([wrong_args], "rl.jsonl")


def test_both_rl_stages_load_them(tmp_path, tiny_model):
    from tulu_kit import grpo, models, ppo
    from tulu_kit.io import write_jsonl

    path = str(write_jsonl(tmp_path / "rlvr.jsonl", ROWS))
    rows = grpo.load_rows(
        grpo.GRPOConfig(model="m", out_dir=str(tmp_path), train_file=path, max_completion_length=8)
    )
    assert [r["dataset"] for r in rows] == ["gsm8k", "MATH", "ifeval", "ifeval", "ifeval"]
    cfg = ppo.PPOConfig(model=str(tiny_model), out_dir=str(tmp_path), train_file=path, max_length=512)
    loaded, dropped = ppo.load_prompts(cfg, models.load_tokenizer(tiny_model))
    assert len(loaded) + dropped == 5 and all("prompt_ids" in r for r in loaded)


def _cfg(path):
    from types import SimpleNamespace

    return SimpleNamespace(train_file=str(path), train_split="train", seed=0, synthetic_size=4)


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("rl.jsonl", b'{"a": 1}\n{"messages": "\xff"}\n', r"rl\.jsonl: line 2: not UTF-8"),
        (
            "rl.jsonl",
            b"[" * 100_000 + b"]" * 100_000 + b"\n",
            r"rl\.jsonl: line 1: (JSON nested too deeply|not)",
        ),
        ("rl.jsonl.gz", b"\x1f\x8b\x08\x00 not gzip", r"rl\.jsonl\.gz: not a readable gzip file"),
        ("rl.jsonl.gz", None, r"rl\.jsonl\.gz: not a readable gzip file after line \d+"),  # truncated
        ("rl.json", b'[{"messages": []}, 3]', r"rl\.json: row 2: expected a JSON object, got int"),
        (
            "rl.jsonl",
            json.dumps({**ROWS[0], "ground_truth": None}).encode(),
            r"rl\.jsonl: line 1: .*ground_truth",
        ),
    ],
)
def test_bad_rl_files_are_one_line_errors_naming_file_and_line(tmp_path, name, content, why):
    import gzip

    from tulu_kit.io import FileFormatError
    from tulu_kit.training import load_rlvr_rows

    if content is None:  # a gzip stream cut in the middle
        whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS * 50))
        content = whole[: len(whole) // 2]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=why) as err:
        load_rlvr_rows(_cfg(tmp_path / name))
    assert "\n" not in str(err.value) and err.value.__cause__ is None
    if "ground_truth" not in why:
        assert isinstance(err.value, FileFormatError)


def test_good_rl_rows_load_from_a_gzipped_file(tmp_path):
    import gzip

    from tulu_kit.training import load_rlvr_rows

    (tmp_path / "rl.jsonl.gz").write_bytes(
        gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS))
    )
    assert load_rlvr_rows(_cfg(tmp_path / "rl.jsonl.gz")) == ROWS
