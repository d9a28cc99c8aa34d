"""DROP: 3-shot reading comprehension with discrete reasoning, F1 and EM (`eval/drop.ipynb`).

Dua et al. 2019, "DROP: A Reading Comprehension Benchmark Requiring Discrete Reasoning Over Paragraphs"
(arXiv 1903.00161). Tulu 3's development suite runs OLMES `drop::llama3`: the validation (dev) split, 3 shots,
F1 primary (OLMES `oe_eval/configs/task_configs.py`). Each item is "Passage: {passage}\\nQuestion: {question}\\n
Answer:" (the layout of the dev file the kit reads, OpenAI simple-evals' `drop_v0_dev.jsonl.gz`), exemplars joined
with a blank line, each followed by " {answer}"; greedy, 50 new tokens, stop at a blank line ("\\n\\n") or "Passage:".

Scoring is the official DROP evaluation script's (allenai `drop_eval.py`, also the code of lm-eval's `drop` task):
answers are split into bags of spans; a span is lower-cased, punctuation and articles removed, whitespace fixed and
a number written as its float (``"1,000"`` -> ``"1000.0"``, ``"4"`` -> ``"4.0"``); EM is
bag equality, F1 aligns predicted and gold spans one to one (Hungarian assignment) and scores a span pair 0 when
both hold numbers that differ. The score of a question is the max over its gold answers.

Exemplars: the 3 shots come from DROP's train split when `drop/drop_dataset_train.json` is under the data root
(`tulu-kit data prepare-eval --only drop` fetches the official zip); otherwise the first 3 dev questions serve as
exemplars and are held out of the scored set (`metrics.json` -> `exemplar_source`).
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

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
from tulu_kit.evals.data import data_root, require_file
from tulu_kit.io import iter_jsonl

NAME = "drop"
FILE = "drop/drop_v0_dev.jsonl.gz"
TRAIN = "drop/drop_dataset_train.json"
URL = "https://openaipublic.blob.core.windows.net/simple-evals/drop_v0_dev.jsonl.gz"
ZIP_URL = "https://s3-us-west-2.amazonaws.com/allennlp/datasets/drop/drop_dataset.zip"
PROTOCOL = {
    "shots": 3,
    "prompt": "{exemplars: Passage: ..\\nQuestion: ..\\nAnswer: {a}\\n\\n} Passage: {passage}\\nQuestion: {q}\\nAnswer:",
    "decoding": "greedy, 50 new tokens, stop '\\n\\n' or 'Passage:'",
    "extraction": "the output up to the stop, stripped",
    "metric": "F1 (primary) and EM, DROP's official normalisation, max over gold answers",
    "source": "OLMES drop::llama3 (3-shot, dev, F1); allenai drop_eval.py (= lm-eval drop utils.py)",
    "data": FILE,
}


@dataclass
class DROPConfig(EvalConfig):
    """DROP settings."""

    out_dir: str = "../runs/lab/eval_drop"
    max_examples: int | None = None  # questions (None: all 9,536)


CONFIG = DROPConfig


# ---------------------------------------------------------------------------------------------- official scoring
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _normalize_token(token: str) -> str:
    """The official order: lower -> punctuation out unless a number -> a number as its float ("16,800" ->
    "16800.0") -> articles out -> whitespace fixed."""
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCT)
    if _is_number(token):
        token = str(float(token))
    return " ".join(_ARTICLES.sub(" ", token).split())


def normalize_answer(text: str) -> str:
    """A span as the official script compares it: split on spaces and hyphens, each piece normalised."""
    parts = [_normalize_token(t) for t in re.split(" |-", text)]
    return " ".join(p for p in parts if p.strip()).strip()


def _bags(answer: str | list[str] | tuple[str, ...]) -> tuple[list[str], list[set[str]]]:
    spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [normalize_answer(s) for s in spans]
    return normalized, [set(n.split()) for n in normalized]


def _numbers(bag: set[str]) -> set[str]:
    return {w for w in bag if _is_number(w)}


def _span_f1(pred: set[str], gold: set[str]) -> float:
    """Bag F1 (an empty bag has precision / recall 1); 0 when the gold names numbers the prediction lacks."""
    gold_numbers = _numbers(gold)
    if gold_numbers and not (gold_numbers & _numbers(pred)):
        return 0.0
    overlap = len(gold & pred)
    precision = overlap / len(pred) if pred else 1.0
    recall = overlap / len(gold) if gold else 1.0
    return 0.0 if precision == 0.0 and recall == 0.0 else 2 * precision * recall / (precision + recall)


def em_f1(predicted: str | list[str], gold: str | list[str]) -> tuple[float, float]:
    """(EM, F1) of a prediction against one gold answer (a string or a list of spans), the official way."""
    from scipy.optimize import linear_sum_assignment

    pred_spans, pred_bags = _bags(predicted)
    gold_spans, gold_bags = _bags(gold)
    em = float(set(pred_spans) == set(gold_spans) and len(pred_spans) == len(gold_spans))
    scores = [[_span_f1(p, g) for p in pred_bags] for g in gold_bags]
    rows, cols = linear_sum_assignment([[-s for s in row] for row in scores])
    best = [0.0] * max(len(gold_bags), len(pred_bags))
    for r, c in zip(rows, cols):
        best[r] = max(best[r], scores[r][c])
    f1 = sum(best) / len(best) if best else 0.0
    return em, round(f1, 2)


def score_one(output: str, golds: list[str]) -> tuple[float, float]:
    """Max (EM, F1) over the gold answers (each a string; empty ones skipped, as the official script does)."""
    em = f1 = 0.0
    for g in golds:
        if g.strip():
            e, f = em_f1(output, g)
            em, f1 = max(em, e), max(f1, f)
    return em, f1


# ---------------------------------------------------------------------------------------------- data
def _split_context(context: str, path: Path, n: int) -> tuple[str, str]:
    m = re.fullmatch(r"Passage: (.*)\nQuestion: (.*)\nAnswer:", context, re.S)
    if not m:
        raise ValueError(f"{path}: line {n}: field context must be 'Passage: ..\\nQuestion: ..\\nAnswer:'")
    return m.group(1), m.group(2)


def load_examples(data_dir: str | None) -> list[dict]:
    """The dev questions: id (line number), passage, question, golds (the '|'-separated ref_text)."""
    path = require_file(data_dir, FILE, NAME)
    out = []
    for n, row in iter_jsonl(path):
        if "context" not in row or "ref_text" not in row:
            raise ValueError(f"{path}: line {n}: expected fields 'context' and 'ref_text'")
        passage, question = _split_context(row["context"], path, n)
        golds = [g for g in row["ref_text"].split("|")]
        out.append({"id": str(n - 1), "passage": passage, "question": question, "golds": golds})
    return out


def _official_answer(ans: dict) -> str:
    if ans.get("number"):
        return str(ans["number"])
    if ans.get("spans"):
        return " ".join(ans["spans"])
    date = ans.get("date") or {}
    return " ".join(x for x in (date.get("day"), date.get("month"), date.get("year")) if x)


def exemplars(data_dir: str | None, dev: list[dict], k: int = 3) -> tuple[list[dict], str]:
    """k exemplars: the first k questions of the official train file if present, else the first k dev items."""
    train = data_root(data_dir) / TRAIN
    if train.is_file():
        shots = []
        for section in json.loads(train.read_text(encoding="utf-8")).values():
            qa = section["qa_pairs"][0]
            shots.append({"passage": section["passage"].strip(), "question": qa["question"],
                          "golds": [_official_answer(qa["answer"])]})  # fmt: skip
            if len(shots) == k:
                break
        return shots, "train"
    return dev[:k], "dev (held out)"


def format_item(e: dict, answer: str | None = None) -> str:
    text = f"Passage: {e['passage']}\nQuestion: {e['question']}\nAnswer:"
    return text + (f" {answer}" if answer is not None else "")


def build_prompt(e: dict, shots: list[dict]) -> str:
    return "".join(format_item(s, s["golds"][0]) + "\n\n" for s in shots) + format_item(e)


# ---------------------------------------------------------------------------------------------- scoring
def score_predictions(preds: list[dict], data_dir: str | None = None) -> Scored:
    """Records with 'id' (the dev line, 0-based) or 'question' (+ 'passage' to tell repeated questions apart),
    and 'output'."""
    gold = load_examples(data_dir)
    by_id = {g["id"]: g for g in gold}
    by_text: dict[str, dict] = {}
    for g in gold:
        by_text.setdefault(norm_text(g["passage"]) + "|" + norm_text(g["question"]), g)
        by_text.setdefault(norm_text(g["question"]), g)
    verdicts, ems, f1s = [], [], []
    for n, p in enumerate(preds, 1):
        if "output" not in p:
            raise ValueError(f"prediction {n}: needs an 'output' field (the model's text)")
        g = by_id.get(str(p["id"])) if "id" in p else None
        if g is None and "question" in p:
            key = norm_text(p.get("passage", "")) + "|" + norm_text(p["question"])
            g = by_text.get(key) or by_text.get(norm_text(p["question"]))
        if g is None:
            raise ValueError(f"prediction {n}: no DROP dev question with this id / question in {FILE}")
        em, f1 = score_one(str(p["output"]).strip(), g["golds"])
        ems.append(em)
        f1s.append(f1)
        verdicts.append({"id": g["id"], "golds": g["golds"], "em": em, "f1": f1})
    extra = {"em": sum(ems) / len(ems) if ems else None}
    return Scored(make_metrics(NAME, "f1", f1s, PROTOCOL, extra=extra), verdicts)


def run(cfg: DROPConfig, backend=None) -> dict:
    """3-shot DROP on (a subset of) the dev set; writes predictions.jsonl and metrics.json."""
    dev = load_examples(cfg.data_dir)
    k = 3 if cfg.n_shot is None else cfg.n_shot
    shots, source = exemplars(cfg.data_dir, dev, k)
    pool = dev[k:] if source.startswith("dev") else dev
    examples = take(pool, cfg.max_examples, cfg.seed)
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 50, stop=("\n\n", "Passage:"))
    preds = generate_predictions(cfg, examples, lambda e, chat: (build_prompt(e, shots), ""), params, backend)
    scored = score_predictions([{"id": p["id"], "output": p["output"]} for p in preds], cfg.data_dir)
    scored.metrics["exemplar_source"] = source
    return finish(cfg, scored, cfg.sampling(params))
