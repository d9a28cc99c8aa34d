"""GPQA (main set, 448 questions): 0-shot chain of thought as Tulu 3's unseen suite runs it (`eval/gpqa.ipynb`).

Rein et al. 2023, "GPQA: A Graduate-Level Google-Proof Q&A Benchmark" (arXiv 2311.12022), `idavidrein/gpqa`
`dataset.zip`. Tulu 3 runs OLMES `gpqa:0shot_cot::tulu3` (`oe_eval/configs/task_configs.py`): chat, 0 shots, the
tulu3 description for four letters "(A), (B), (C), (D)" and final description, greedy, 2,048 new tokens, no stop,
format regex `Therefore, the answer is \\(([A-D])\\)`; extraction and match as `cot_mc.py`.

The question block is OLMES's `gpqa:0shot_cot_template::tulu3` layout, "Question: {q}\\nChoices:\\n (A) ..\\n (B)
..": the four answers, cleaned as lm-eval's `gpqa` `preprocess` does (strip, " [title]" -> ". ", double spaces),
are shuffled per question with `random.Random(f"{shuffle_seed}/{Record ID}")` -- a fixed order the kit chose
(OLMES's own shuffle seed was not readable here), so a score is comparable across kit runs, and close to but not
identical with OLMES's.

The data stays as shipped: the password-protected zip is read in memory and never written out unzipped (the
authors ask that questions not appear in plain text online). The password is the one the official README gives.
"""

from __future__ import annotations

import csv
import io
import random
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
    "prompt": "chat: tulu3 description + Question: {q}\\nChoices:\\n (A) ..\\n (D) .. + final description",
    "decoding": "greedy, 2048 new tokens, no stop sequence",
    "extraction": "last 'Therefore, the answer is (X)', else OLMES's fallbacks (answer is X / Answer: X / last letter)",
    "metric": "exact match over the 448 main-set questions",
    "source": "OLMES gpqa:0shot_cot::tulu3 (task_configs.py); choices cleaned as lm-eval gpqa utils.preprocess",
    "data": FILE + " (main set, read in memory)",
}


@dataclass
class GPQAConfig(EvalConfig):
    """GPQA settings."""

    out_dir: str = "../runs/lab/eval_gpqa"
    chat: bool = True  # the tulu3 config uses the chat format
    subset: str = "main"  # main (Tulu 3), diamond or extended
    shuffle_seed: int = 42  # orders each question's four answers (fixed per question)


CONFIG = GPQAConfig


def preprocess(text: str | None) -> str:
    """lm-eval gpqa utils.preprocess."""
    if text is None:
        return " "
    return text.strip().replace(" [title]", ". ").replace("  ", " ")


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


def load_examples(data_dir: str | None, subset: str = "main", shuffle_seed: int = 42) -> list[dict]:
    out = []
    for i, row in enumerate(read_rows(data_dir, subset)):
        correct = preprocess(row["Correct Answer"])
        choices = [preprocess(row[f"Incorrect Answer {k}"]) for k in (1, 2, 3)] + [correct]
        rid = row.get("Record ID") or str(i)
        random.Random(f"{shuffle_seed}/{rid}").shuffle(choices)
        ex = {"id": rid, "group": subset, "question": row["Question"], "options": choices, "n_choices": 4,
              "gold": cot_mc.LETTERS[choices.index(correct)]}  # fmt: skip
        ex["text"] = build_prompt(ex)
        out.append(ex)
    return out


def build_prompt(e: dict) -> str:
    block = f"Question: {e['question'].strip()}\nChoices:\n" + "\n".join(
        f" ({cot_mc.LETTERS[i]}) {o}" for i, o in enumerate(e["options"])
    )
    return cot_mc.description(cot_mc.FOUR) + block + cot_mc.final_description(cot_mc.FOUR)


def score_predictions(
    preds: list[dict], data_dir: str | None = None, subset: str = "main", shuffle_seed: int = 42
) -> Scored:
    """Records with 'id' (the Record ID) or 'question', and 'output'. The gold letter depends on the shuffle:
    score with the `shuffle_seed` the predictions were made with."""
    gold = load_examples(data_dir, subset, shuffle_seed)
    scored = cot_mc.score(NAME, preds, gold, PROTOCOL, f"{FILE} ({subset})", macro=False)
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
