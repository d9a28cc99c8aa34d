"""Tulu 3's 0-shot chain-of-thought multiple choice (AGIEval English, MMLU-Pro, GPQA): prompt and answer extraction.

Not a benchmark itself: `agieval`, `mmlu_pro` and `gpqa` build on it. What OLMES's `::tulu3` configs define
(`oe_eval/configs/task_configs.py`, tasks `agi_eval_*:0shot_cot::tulu3`, `mmlu_pro_*:0shot_cot::tulu3`,
`gpqa:0shot_cot::tulu3`): chat format, 0 shots, no answer prefix, a `description` before the question and a
`final_description` after it asking to end with "Therefore, the answer is (X)", greedy, 2,048 new tokens, no stop
sequence, and `answer_format_regex` `Therefore, the answer is \\(([A-J])\\)` (the letters of the benchmark).

Extraction (OLMES `GenericMMLUPro_CoT._extract_answer`, `oe_eval/tasks/oe_eval_tasks/mmlu_pro.py`): the **last**
match of the format regex; else the first `(?i)answer is:?\\s*\\(?([A-J])\\)?`; else `.*[aA]nswer:\\s*([A-J])`;
else the last stand-alone capital letter; parentheses removed; compared with the gold letter ignoring case.
`answer_format_correct` records which rule fired (1 format regex, 0.5 a fallback phrase, 0 the bare letter).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tulu_kit.evals.core import EvalConfig, GenParams, Scored, generate_predictions, make_metrics, norm_text

LETTERS = "ABCDEFGHIJKLMNO"


def description(letters: str) -> str:
    """The `description` of the tulu3 configs ("... is one of (A), (B), (C), (D)." for four-choice GPQA,
    "... (A), (B), (C), (D), (E), etc." for AGIEval and MMLU-Pro)."""
    return (
        "Answer the following multiple-choice question by giving the correct answer letter in parentheses. "
        'Provide CONCISE reasoning for the answer, and make sure to finish the response with "Therefore, the '
        f'answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of {letters}.\n\n'
    )


def final_description(letters: str, sep: str = "\n\n") -> str:
    """The `final_description`: `sep` ("\\n\\n"; MMLU-Pro's config has "\\n" after its "\\n"-ended query)."""
    return (
        f'{sep}Answer the above question and REMEMBER to finish your response with the exact phrase "Therefore, '
        f'the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of {letters}.'
    )


FOUR = "(A), (B), (C), (D)"
MANY = "(A), (B), (C), (D), (E), etc"


def format_regex(n_choices: int) -> str:
    return rf"Therefore, the answer is \(([A-{LETTERS[n_choices - 1]}])\)"


def extract_letter(text: str, regex: str, last: str = "J") -> tuple[str, float]:
    """(letter or "", answer_format_correct) by OLMES's rules (module docstring); `last` bounds the fallbacks."""
    matches = re.findall(regex, text)
    if matches:
        return re.sub(r"\(|\)", "", matches[-1]), 1.0
    m = re.search(rf"(?i)answer is:?\s*\(?([A-{last}])\)?", text)
    if not m:
        m = re.search(rf".*[aA]nswer:\s*([A-{last}])", text)
    if m:
        return re.sub(r"\(|\)", "", m.group(1)), 0.5
    bare = re.findall(rf".*\b([A-{last}])\b", text)
    return (bare[-1] if bare else ""), 0.0


def is_correct(letter: str, gold: str) -> bool:
    return bool(letter) and letter.strip().lower() == gold.strip().lower()


# ---------------------------------------------------------------------------------------------- scoring + run
def score(
    name: str,
    preds: list[dict],
    gold: list[dict],
    protocol: dict,
    source: str,
    macro: bool,
    extract: Callable[[str, int], tuple[str, float]] | None = None,
) -> Scored:
    """Score records with 'id' (or 'question', matched whitespace-normalized) and 'output' against `gold`
    examples ({id, question, group, gold, n_choices}); per-group subscores, macro or micro average. `extract`
    (output, number of choices) -> (letter, answer_format_correct): a benchmark's own rules (default: OLMES's
    MMLU-Pro rules, `extract_letter`)."""
    by_id = {g["id"]: g for g in gold}
    by_q: dict[str, dict] = {}
    for g in gold:
        by_q.setdefault(norm_text(g["question"]), g)
    verdicts, values, groups, formats = [], [], {}, []
    for n, p in enumerate(preds, 1):
        if "output" not in p:
            raise ValueError(f"prediction {n}: needs an 'output' field (the model's text)")
        g = by_id.get(str(p["id"])) if "id" in p else None
        if g is None and "question" in p:
            g = by_q.get(norm_text(p["question"]))
        if g is None:
            raise ValueError(f"prediction {n}: no question with this id / question text in {source}")
        if extract is None:
            n_choices = g["n_choices"]
            letter, fmt = extract_letter(str(p["output"]), format_regex(n_choices), LETTERS[n_choices - 1])
        else:
            letter, fmt = extract(str(p["output"]), g["n_choices"])
        ok = is_correct(letter, g["gold"])
        values.append(float(ok))
        formats.append(fmt)
        groups.setdefault(g["group"], []).append(float(ok))
        verdicts.append({"id": g["id"], "group": g["group"], "gold": g["gold"], "extracted": letter,
                         "answer_format_correct": fmt, "correct": ok})  # fmt: skip
    extra = {"answer_format_correct": sum(formats) / len(formats) if formats else None}
    metrics = make_metrics(name, "exact_match", values, protocol, groups=dict(sorted(groups.items())),
                           macro=macro, extra=extra)  # fmt: skip
    return Scored(metrics, verdicts)


def generate(cfg: EvalConfig, examples: list[dict], backend=None) -> tuple[list[dict], GenParams]:
    """Greedy 0-shot CoT answers for `examples` (each with its user `text`), 2,048 new tokens, no stop."""
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 2048)
    return generate_predictions(cfg, examples, lambda e, chat: (e["text"], ""), params, backend), params
