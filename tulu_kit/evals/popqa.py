"""PopQA: 14,267 entity questions, 15-shot, a gold alias in the answer (`eval/popqa.ipynb`).

Mallen et al. 2023, "When Not to Trust Language Models" (arXiv 2212.10511), data `akariasai/PopQA` (`test.tsv`:
`question`, `obj`, `prop_id` -- one of 16 relation templates -- and `possible_answers`, a JSON list of the object's
aliases). Tulu 3's development suite runs OLMES `popqa::tulu` (15 shots, `exact_match`). The protocol below is the
authors' own (`AlexTMallen/adaptive-retrieval` `run_model.py`, "vanilla" method), which OLMES's task follows
(OLMES's `popqa.py` itself could not be read here):

* 15 exemplars "Q: {question} A: {obj}", one from each of the other 15 relations (drawn from the test set, a fresh
  draw per question; here seeded by the question's id so a run is reproducible), shuffled, joined by blank lines;
  then "Q: {question} A:". Greedy, 15 new tokens.
* The prediction is the output without a leading blank line, up to its first newline. It is right when an alias,
  as is, lower-cased or capitalised, occurs in it (the paper's "accuracy"; OLMES calls it exact_match).

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
PROTOCOL = {
    "shots": "15: one per other relation, seeded per question",
    "prompt": "{Q: {q} A: {obj}\\n\\n}x15 Q: {question} A:",
    "decoding": "greedy, 15 new tokens",
    "extraction": "the output without a leading blank line, up to its first newline",
    "metric": "right when a gold alias (as is, lower-cased or capitalised) occurs in the prediction",
    "source": "OLMES popqa::tulu (15-shot); AlexTMallen/adaptive-retrieval run_model.py (prompt, shots, check)",
    "data": FILE,
}


@dataclass
class PopQAConfig(EvalConfig):
    """PopQA settings."""

    out_dir: str = "../runs/lab/eval_popqa"
    max_examples: int | None = None  # questions (None: all 14,267)


CONFIG = PopQAConfig


def load_examples(data_dir: str | None) -> list[dict]:
    """Rows of test.tsv: id, question, obj, prop_id, answers (the JSON list in `possible_answers`)."""
    path = require_file(data_dir, FILE, NAME)
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"question", "obj", "prop_id", "possible_answers"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for n, row in enumerate(reader, 2):
            try:
                answers = json.loads(row["possible_answers"])
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{path}: line {n}: possible_answers is not a JSON list") from None
            if not isinstance(answers, list) or not answers:
                raise ValueError(f"{path}: line {n}: possible_answers must be a non-empty JSON list")
            out.append({"id": str(row.get("id") or n - 2), "question": row["question"], "obj": row["obj"],
                        "prop_id": str(row["prop_id"]), "answers": [str(a) for a in answers]})  # fmt: skip
    return out


def exemplars(e: dict, by_prop: dict[str, list[dict]], k: int = 15, seed: int = 42) -> list[dict]:
    """k // (relations - 1) rows of every other relation (1 each for PopQA's 16), seeded by the question, shuffled."""
    others = sorted(p for p in by_prop if p != e["prop_id"])
    if not others or k <= 0:
        return []
    per = max(1, k // len(others))
    rng = random.Random(f"{seed}/{e['id']}")
    shots = [s for p in others for s in rng.sample(by_prop[p], min(per, len(by_prop[p])))]
    rng.shuffle(shots)
    return shots[:k]


def build_prompt(e: dict, shots: list[dict]) -> str:
    return "".join(f"Q: {s['question']} A: {s['obj']}\n\n" for s in shots) + f"Q: {e['question']} A:"


def prediction(output: str) -> str:
    text = str(output)
    return (text[2:] if text.startswith("\n\n") else text).split("\n")[0]


def is_correct(output: str, answers: list[str]) -> bool:
    pred = prediction(output)
    return any(a in pred or a.lower() in pred or a.capitalize() in pred for a in answers)


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
        verdicts.append(
            {"id": g["id"], "answers": g["answers"], "predicted": prediction(p["output"]), "correct": ok}
        )
    return Scored(make_metrics(NAME, "exact_match", values, PROTOCOL), verdicts)


def run(cfg: PopQAConfig, backend=None) -> dict:
    rows = load_examples(cfg.data_dir)
    by_prop: dict[str, list[dict]] = {}
    for r in rows:
        by_prop.setdefault(r["prop_id"], []).append(r)
    k = 15 if cfg.n_shot is None else cfg.n_shot
    examples = take(rows, cfg.max_examples, cfg.seed)
    params = GenParams(
        max_new_tokens=cfg.max_new_tokens or 15
    )  # no stop: the first line is taken after a leading blank line is dropped

    def build(e: dict, chat: bool) -> tuple[str, str]:
        return build_prompt(e, exemplars(e, by_prop, k, cfg.seed)), ""

    preds = generate_predictions(cfg, examples, build, params, backend)
    scored = score_predictions([{"id": p["id"], "output": p["output"]} for p in preds], cfg.data_dir)
    return finish(cfg, scored, cfg.sampling(params))
