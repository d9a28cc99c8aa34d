"""GPQA (main set, 448 questions): 0-shot chain of thought as Tulu 3's unseen suite runs it (`eval/gpqa.ipynb`).

Rein et al. 2023, "GPQA: A Graduate-Level Google-Proof Q&A Benchmark" (arXiv 2311.12022), `idavidrein/gpqa`
`dataset.zip`. Tulu 3 runs OLMES `gpqa:0shot_cot::tulu3` (`oe_eval/configs/task_configs.py`): chat, 0 shots, the
tulu3 description for four letters "(A), (B), (C), (D)" and final description, greedy, 2,048 new tokens, no stop,
format regex `Therefore, the answer is \\(([A-D])\\)`.

The rest is OLMES's `GPQA` task (`oe_eval/tasks/oe_eval_tasks/gpqa.py`, read in the fork goodfire-ai/olmes at
`acbb746`): each answer cleaned by `_preprocess` (strip, " [title]" -> ". ", "[...]" removed, double spaces); the
four shuffled with `random.Random(111 + index)` (`answer_shuffling_seed` 111, index = the row's position in the
main set); the query "Question: {q}\nChoices:\n" + " (A) {answer}\n" lines, between the description and the
final description. Extraction (`_extract_answer`): the output is cut at a "\nQuestion:" line; the last format-regex
match, else the last "(X)", else "The correct answer is: X", else the last stand-alone A-D; compared ignoring case
and punctuation.

The data stays as shipped: the password-protected zip is read in memory and never written out unzipped (the
authors ask that questions not appear in plain text online). The password is the one the official README gives.
"""

from __future__ import annotations

import csv
import io
import random
import re
import zipfile
from dataclasses import dataclass

from tulu_kit.evals import cot_mc
from tulu_kit.evals.core import EvalConfig, Scored, finish, take
from tulu_kit.evals.data import require_file

NAME = "gpqa"
FILE = "gpqa/dataset.zip"
URL = "https://github.com/idavidrein/gpqa/raw/main/dataset.zip"
PASSWORD = b"deserted-untie-orchid"  # published in the official README ("Dataset Download")
MEMBER = "dataset/gpqa_{subset}.csv"
PROTOCOL = {
    "shots": 0,
    "prompt": "chat: tulu3 description + Question: {q}\\nChoices:\\n (A) ..\\n (D) ..\\n + final description",
    "decoding": "greedy, 2048 new tokens, no stop sequence",
    "extraction": "last 'Therefore, the answer is (X)', else the last '(X)', else 'The correct answer is: X', "
    "else the last stand-alone letter (OLMES GPQA._extract_answer)",
    "metric": "exact match over the 448 main-set questions",
    "source": "OLMES gpqa:0shot_cot::tulu3 (task_configs.py) and its GPQA task (gpqa.py: shuffle, query, extraction)",
    "data": FILE + " (main set, read in memory)",
}


@dataclass
class GPQAConfig(EvalConfig):
    """GPQA settings."""

    out_dir: str = "../runs/lab/eval_gpqa"
    chat: bool = True  # the tulu3 config uses the chat format
    subset: str = "main"  # main (Tulu 3), diamond or extended
    shuffle_seed: int = 111  # OLMES's answer_shuffling_seed: question i's answers shuffled by Random(111 + i)


CONFIG = GPQAConfig


def preprocess(text: str | None) -> str:
    """OLMES GPQA._preprocess."""
    if text is None:
        return " "
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def read_rows(data_dir: str | None, subset: str = "main") -> list[dict]:
    """The CSV rows of one subset, decrypted in memory (nothing is written)."""
    if subset not in ("main", "diamond", "extended"):
        raise ValueError(f"GPQA subset must be main, diamond or extended, got {subset!r}")
    path = require_file(data_dir, FILE, NAME)
    with zipfile.ZipFile(path) as z:
        raw = z.read(MEMBER.format(subset=subset), pwd=PASSWORD)
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    for n, row in enumerate(rows, 2):
        for k in (
            "Question",
            "Correct Answer",
            "Incorrect Answer 1",
            "Incorrect Answer 2",
            "Incorrect Answer 3",
        ):
            if k not in row:
                raise ValueError(f"{path}:{MEMBER.format(subset=subset)}: row {n}: missing column {k!r}")
    return rows


def load_examples(data_dir: str | None, subset: str = "main", shuffle_seed: int = 111) -> list[dict]:
    out = []
    for i, row in enumerate(read_rows(data_dir, subset)):
        correct = preprocess(row["Correct Answer"])
        choices = [preprocess(row[f"Incorrect Answer {k}"]) for k in (1, 2, 3)] + [correct]
        random.Random(shuffle_seed + i).shuffle(choices)
        ex = {"id": str(i), "group": subset, "question": row["Question"], "options": choices, "n_choices": 4,
              "gold": cot_mc.LETTERS[choices.index(correct)]}  # fmt: skip
        ex["text"] = build_prompt(ex)
        out.append(ex)
    return out


def build_prompt(e: dict) -> str:
    query = f"Question: {e['question']}\nChoices:\n" + "".join(
        f" ({cot_mc.LETTERS[i]}) {o}\n" for i, o in enumerate(e["options"])
    )
    return cot_mc.description(cot_mc.FOUR) + query + cot_mc.final_description(cot_mc.FOUR)


def extract(text: str, n_choices: int = 4) -> tuple[str, float]:
    """OLMES GPQA._extract_answer (module docstring); (letter, answer_format_correct)."""
    text = re.split(r"\n\s*Question:", text, maxsplit=1)[0]
    matches = re.findall(cot_mc.format_regex(4), text)
    if matches:
        return matches[-1], 1.0
    paren = re.findall(r"\(([A-D])\)", text)
    if paren:
        return paren[-1], 0.5
    m = re.search(r"(?<=The correct answer is: )([A-D])", text)
    if m:
        return m.group(1), 0.5
    bare = re.findall(r".*\b([A-D])\b", text)
    return (bare[-1] if bare else ""), 0.0


def score_predictions(
    preds: list[dict], data_dir: str | None = None, subset: str = "main", shuffle_seed: int = 111
) -> Scored:
    """Records with 'id' (the row index in the subset) or 'question', and 'output'. The gold letter depends on
    the shuffle: score with the `shuffle_seed` the predictions were made with."""
    gold = load_examples(data_dir, subset, shuffle_seed)
    scored = cot_mc.score(NAME, preds, gold, PROTOCOL, f"{FILE} ({subset})", macro=False, extract=extract)
    scored.metrics["shuffle_seed"] = shuffle_seed
    return scored


def run(cfg: GPQAConfig, backend=None) -> dict:
    examples = take(
        load_examples(cfg.data_dir, cfg.subset or "main", cfg.shuffle_seed), cfg.max_examples, cfg.seed
    )
    preds, params = cot_mc.generate(cfg, examples, backend)
    outputs = [{"id": p["id"], "output": p["output"]} for p in preds]
    scored = score_predictions(outputs, cfg.data_dir, cfg.subset or "main", cfg.shuffle_seed)
    return finish(cfg, scored, cfg.sampling(params))
