"""MMLU-Pro: 12,032 ten-option questions in 14 categories, 0-shot CoT (Tulu 3) or 5-shot MC (`eval/mmlu_pro.ipynb`).

Wang et al. 2024, "MMLU-Pro: A More Robust and Challenging Multi-Task Language Understanding Benchmark"
(arXiv 2406.01574), data `TIGER-Lab/MMLU-Pro`. Two forms, both as OLMES defines them:

* `form="cot"` (default; Tulu 3's unseen suite, `mmlu_pro:0shot_cot::tulu3`): chat, 0 shots, the tulu3 description,
  "Question: {q}\\n" + " (A) {option}\\n" lines (OLMES `GenericMMLUPro_CoT._process_doc` with `answer_prefix`
  None), the final description after "\\n"; greedy, 2,048 new tokens, no stop; extraction `cot_mc.py` (OLMES's
  `_extract_answer` for this task, read in `oe_eval/tasks/oe_eval_tasks/mmlu_pro.py`); **macro** average over
  the 14 categories (OLMES `task_suites.py`).
* `form="mc"` (`mmlu_pro:mc::none`, 5-shot): OLMES `make_mcq_prompt` blocks "Question: {q}\\n A. {option}\\n ...
  \\nAnswer:" with the first 5 validation questions of the category (fixed order) answered " X", blank-line
  separated; the prediction is the letter (of the question's own options) with the highest next-token log-prob;
  **micro** average. Needs `mmlu_pro/validation.jsonl` (70 questions; `tulu-kit data prepare-eval --only mmlu_pro`).

Upstream quirk kept: `question_id` 3983 has `answer` "C" but `answer_index` 1; the gold is `answer_index`'s letter
(what OLMES scores against).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tulu_kit.evals import cot_mc
from tulu_kit.evals.core import (
    Backend,
    EvalConfig,
    Scored,
    chat_prompt,
    finish,
    make_metrics,
    norm_text,
    predict,
    select_subset,
    take,
)
from tulu_kit.evals.data import require_file
from tulu_kit.io import iter_jsonl

NAME = "mmlu_pro"
FILE = "mmlu_pro/test.jsonl.gz"
VALIDATION = "mmlu_pro/validation.jsonl"
HF = "https://huggingface.co/datasets/TIGER-Lab/MMLU-Pro/resolve/main/data"
CATEGORIES = [
    "biology", "business", "chemistry", "computer science", "economics", "engineering", "health", "history",
    "law", "math", "other", "philosophy", "physics", "psychology",
]  # fmt: skip
PROTOCOL = {
    "shots": "0 (cot, default) or 5 validation questions (mc)",
    "prompt": "cot: tulu3 description + Question: {q}\\n (A) ..\\n + final description; "
    "mc: Question: {q}\\n A. ..\\nAnswer: blocks",
    "decoding": "cot: greedy, 2048 new tokens, no stop; mc: next-token log-prob of the option letters",
    "extraction": "cot: last 'Therefore, the answer is (X)', else OLMES's fallbacks; mc: argmax letter",
    "metric": "cot: exact match, macro over 14 categories; mc: accuracy, micro",
    "source": "OLMES mmlu_pro:0shot_cot::tulu3 / mmlu_pro:mc::none (task_configs.py, mmlu_pro.py)",
    "data": FILE,
}


@dataclass
class MMLUProConfig(EvalConfig):
    """MMLU-Pro settings; `subset` picks categories, `max_examples` is per category."""

    out_dir: str = "../runs/lab/eval_mmlu_pro"
    chat: bool = True  # cot: the tulu3 config uses the chat format (mc: set False for base models)
    form: Literal["cot", "mc"] = "cot"  # 0-shot chain of thought (Tulu 3) or 5-shot multiple choice


CONFIG = MMLUProConfig


def _check(path, n: int, row: dict) -> dict:
    for k in ("question_id", "question", "options", "answer_index", "category"):
        if k not in row:
            raise ValueError(f"{path}: line {n}: missing field {k!r}")
    if not 0 <= int(row["answer_index"]) < len(row["options"]):
        raise ValueError(f"{path}: line {n}: answer_index {row['answer_index']} is not an option")
    return row


def _example(row: dict) -> dict:
    n = len(row["options"])
    ex = {"id": str(row["question_id"]), "group": row["category"], "question": row["question"],
          "options": row["options"], "gold": cot_mc.LETTERS[int(row["answer_index"])], "n_choices": n}  # fmt: skip
    ex["text"] = build_cot_prompt(ex)
    return ex


def load_examples(data_dir: str | None) -> list[dict]:
    path = require_file(data_dir, FILE, NAME)
    return [_example(_check(path, n, row)) for n, row in iter_jsonl(path)]


def load_validation(data_dir: str | None) -> dict[str, list[dict]]:
    path = require_file(data_dir, VALIDATION, NAME)
    out: dict[str, list[dict]] = {}
    for n, row in iter_jsonl(path):
        ex = _example(_check(path, n, row))
        out.setdefault(ex["group"], []).append(ex)
    return out


def build_cot_prompt(e: dict) -> str:
    query = f"Question: {e['question']}\n" + "".join(
        f" ({cot_mc.LETTERS[i]}) {o}\n" for i, o in enumerate(e["options"])
    )
    return cot_mc.description(cot_mc.MANY) + query + cot_mc.final_description(cot_mc.MANY, "\n")


def mcq_block(e: dict, with_answer: bool) -> str:
    """OLMES make_mcq_prompt: "Question: {q}\\n A. ..\\n B. ..\\nAnswer:" (+ " X" for an exemplar)."""
    choices = "\n".join(f" {cot_mc.LETTERS[i]}. {o}" for i, o in enumerate(e["options"]))
    return f"Question: {e['question']}\n{choices}\nAnswer:" + (f" {e['gold']}" if with_answer else "")


def build_mc_prompt(e: dict, shots: list[dict]) -> str:
    return "".join(mcq_block(s, True) + "\n\n" for s in shots) + mcq_block(e, False)


def _mc_letter(p: dict, n_choices: int, row: int) -> str | None:
    if p.get("prediction") is not None:
        return str(p["prediction"]).strip().strip("()").upper()[:1] or None
    lp = p["logprobs"]
    if not isinstance(lp, list) or len(lp) < n_choices:
        raise ValueError(
            f"prediction {row}: field logprobs must list at least {n_choices} numbers (A, B, ...)"
        )
    return cot_mc.LETTERS[max(range(n_choices), key=lambda i: lp[i])]


def score_predictions(preds: list[dict], data_dir: str | None = None) -> Scored:
    """CoT records: 'id' (question_id) or 'question', and 'output'. MC records: 'id' or 'question', and
    'logprobs' (one per option, A first) or 'prediction' (a letter). One file holds one form."""
    gold = load_examples(data_dir)
    if not any("logprobs" in p or "prediction" in p for p in preds):
        return cot_mc.score(NAME, preds, gold, PROTOCOL, FILE, macro=True)
    by_id = {g["id"]: g for g in gold}
    by_q: dict[str, dict] = {}
    for g in gold:
        by_q.setdefault(norm_text(g["question"]), g)
    values, groups, verdicts = [], {}, []
    for n, p in enumerate(preds, 1):
        g = by_id.get(str(p.get("id"))) or by_q.get(norm_text(p.get("question", "")))
        if g is None:
            raise ValueError(f"prediction {n}: no MMLU-Pro question with this id / question text in {FILE}")
        if "logprobs" not in p and "prediction" not in p:
            raise ValueError(f"prediction {n}: an MC file needs 'logprobs' or 'prediction' on every line")
        letter = _mc_letter(p, g["n_choices"], n)
        ok = letter == g["gold"]
        values.append(float(ok))
        groups.setdefault(g["group"], []).append(float(ok))
        verdicts.append(
            {"id": g["id"], "group": g["group"], "gold": g["gold"], "predicted": letter, "correct": ok}
        )
    return Scored(
        make_metrics(NAME, "accuracy", values, PROTOCOL, groups=dict(sorted(groups.items()))), verdicts
    )


def _selected(cfg: MMLUProConfig) -> list[dict]:
    cats = select_subset(CATEGORIES, cfg.subset, "MMLU-Pro categories")
    by_cat: dict[str, list[dict]] = {}
    for e in load_examples(cfg.data_dir):
        by_cat.setdefault(e["group"], []).append(e)
    return [e for c in cats for e in take(by_cat.get(c, []), cfg.max_examples, cfg.seed)]


def run(cfg: MMLUProConfig, backend=None) -> dict:
    examples = _selected(cfg)
    if cfg.form == "cot":
        preds, params = cot_mc.generate(cfg, examples, backend)
        scored = score_predictions([{"id": p["id"], "output": p["output"]} for p in preds], cfg.data_dir)
        return finish(cfg, scored, cfg.sampling(params))
    if cfg.form != "mc":
        raise ValueError(f"MMLU-Pro form must be 'cot' or 'mc', got {cfg.form!r}")
    shots_by_cat = load_validation(cfg.data_dir)  # before loading the model: a missing file is said first
    k = 5 if cfg.n_shot is None else cfg.n_shot

    def text(e: dict) -> str:
        return build_mc_prompt(e, shots_by_cat.get(e["group"], [])[:k])

    def compute(be: Backend, chunk: list[dict]) -> list[dict]:
        prompts = [chat_prompt(be.tokenizer, text(e), cfg.chat) for e in chunk]
        scores = be.choice_logprobs(prompts, list(cot_mc.LETTERS[:10]))
        return [
            {"id": e["id"], "question": e["question"], "prompt": p, "logprobs": s[: e["n_choices"]]}
            for e, p, s in zip(chunk, prompts, scores)
        ]

    preds = predict(cfg, examples, compute, backend, sort_key=lambda e: len(text(e)), prompt_of=text)
    return finish(cfg, score_predictions(preds, cfg.data_dir))
