"""PopQA: 14,267 entity questions, 15-shot, exact match of any gold alias (`eval/popqa.ipynb`).

Mallen et al. 2023, "When Not to Trust Language Models" (arXiv 2212.10511), data `akariasai/PopQA` (`test.tsv`,
columns `question` and `possible_answers`, a JSON list of the object's aliases). Tulu 3's development suite runs
OLMES `popqa::tulu`: 15 shots, exact match, chat format with the exemplars as turns in OLMES (here: one user turn
holding them, as every kit benchmark does in chat mode).

Each item is "Q: {question} A:" and an exemplar is followed by " {first alias}"; items are separated by a blank
line. Greedy, 15 new tokens, stop at "\\n". The prediction is the output up to the first newline, stripped; it is
right when it equals any gold alias after lower-casing and whitespace normalisation. The 15 exemplars are the
first 15 questions of a seeded shuffle (seed 1234) of the file, held out of the scored set (`exemplar_ids` in
`metrics.json`).

The data is not in the project's shared folder (too large to bring); `tulu-kit data prepare-eval --only popqa`
fetches `popqa/test.tsv`.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass

from tulu_kit.evals.core import (
    EvalConfig,
    GenParams,
    Scored,
    finish,
    generate_predictions,
    make_metrics,
    norm_text,
    take,
)
from tulu_kit.evals.data import require_file

NAME = "popqa"
FILE = "popqa/test.tsv"
URL = "https://huggingface.co/datasets/akariasai/PopQA/resolve/main/test.tsv"
SHOT_SEED = 1234
PROTOCOL = {
    "shots": 15,
    "prompt": "{Q: {q} A: {alias}\\n\\n}x15 Q: {question} A:",
    "decoding": "greedy, 15 new tokens, stop '\\n'",
    "extraction": "the output up to the first newline, stripped",
    "metric": "exact match with any gold alias (case and whitespace ignored)",
    "source": "OLMES popqa::tulu (15-shot, exact match); akariasai/PopQA test.tsv",
    "data": FILE,
}


@dataclass
class PopQAConfig(EvalConfig):
    """PopQA settings."""

    out_dir: str = "../runs/lab/eval_popqa"
    max_examples: int | None = None  # questions (None: all but the 15 exemplars)


CONFIG = PopQAConfig


def load_examples(data_dir: str | None) -> list[dict]:
    """Rows of test.tsv: id, question, answers (the JSON list in `possible_answers`)."""
    path = require_file(data_dir, FILE, NAME)
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"question", "possible_answers"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for n, row in enumerate(reader, 2):
            try:
                answers = json.loads(row["possible_answers"])
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{path}: line {n}: possible_answers is not a JSON list") from None
            if not isinstance(answers, list) or not answers:
                raise ValueError(f"{path}: line {n}: possible_answers must be a non-empty JSON list")
            out.append({"id": str(row.get("id") or n - 2), "question": row["question"], "answers": answers})
    return out


def split_shots(examples: list[dict], k: int = 15) -> tuple[list[dict], list[dict]]:
    """(exemplars, the rest): the first k of a seeded shuffle are exemplars, held out of scoring."""
    order = list(range(len(examples)))
    random.Random(SHOT_SEED).shuffle(order)
    chosen = set(order[:k])
    return [examples[i] for i in order[:k]], [e for i, e in enumerate(examples) if i not in chosen]


def build_prompt(e: dict, shots: list[dict]) -> str:
    return "".join(f"Q: {s['question']} A: {s['answers'][0]}\n\n" for s in shots) + f"Q: {e['question']} A:"


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def is_correct(output: str, answers: list[str]) -> bool:
    pred = _norm(str(output).strip().split("\n")[0])
    return bool(pred) and any(pred == _norm(a) for a in answers)


def score_predictions(preds: list[dict], data_dir: str | None = None) -> Scored:
    """Records with 'id' or 'question', and 'output'."""
    gold = load_examples(data_dir)
    by_id = {g["id"]: g for g in gold}
    by_q: dict[str, dict] = {}
    for g in gold:
        by_q.setdefault(norm_text(g["question"]), g)
    values, verdicts = [], []
    for n, p in enumerate(preds, 1):
        if "output" not in p:
            raise ValueError(f"prediction {n}: needs an 'output' field (the model's text)")
        g = by_id.get(str(p["id"])) if "id" in p else None
        g = g or by_q.get(norm_text(p.get("question", "")))
        if g is None:
            raise ValueError(f"prediction {n}: no PopQA question with this id / question in {FILE}")
        ok = is_correct(p["output"], g["answers"])
        values.append(float(ok))
        verdicts.append({"id": g["id"], "answers": g["answers"], "correct": ok})
    return Scored(make_metrics(NAME, "exact_match", values, PROTOCOL), verdicts)


def run(cfg: PopQAConfig, backend=None) -> dict:
    shots, pool = split_shots(load_examples(cfg.data_dir), 15 if cfg.n_shot is None else cfg.n_shot)
    examples = take(pool, cfg.max_examples, cfg.seed)
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 15, stop=("\n",))
    preds = generate_predictions(cfg, examples, lambda e, chat: (build_prompt(e, shots), ""), params, backend)
    scored = score_predictions([{"id": p["id"], "output": p["output"]} for p in preds], cfg.data_dir)
    scored.metrics["exemplar_ids"] = [s["id"] for s in shots]
    return finish(cfg, scored, cfg.sampling(params))
