"""AGIEval English: 8 exam tasks, 0-shot chain of thought as Tulu 3's unseen suite runs it (`eval/agieval.ipynb`).

Zhong et al. 2023, "AGIEval: A Human-Centric Benchmark for Evaluating Foundation Models" (arXiv 2304.06364),
data `ruixiangcui/AGIEval` `data/v1/`. Tulu 3 runs OLMES `agi_eval_english:0shot_cot::tulu3`: the 8 English
multiple-choice tasks of OLMES `AGI_EVAL_ENGLISH_DATASETS` without `sat-en-without-passage` (aqua-rat,
gaokao-english, logiqa-en, lsat-ar, lsat-lr, lsat-rc, sat-en, sat-math; 2,646 questions), **macro average** over
the tasks (OLMES `task_suites.py`). Each task: `agi_eval_<task>:0shot_cot::tulu3` (OLMES `task_configs.py`) --
chat, 0 shots, `prompt_style: no_answer_prefix`, the tulu3 description / final description (`cot_mc.py`), greedy,
2,048 new tokens, format regex `Therefore, the answer is \\(([A-F])\\)`; extraction and match as `cot_mc.py`.

The question is AGIEval's own English zero-shot item (ruixiangcui/AGIEval `src/dataset_loader.py`
`convert_zero_shot` at `5c77d07`; OLMES bundles that loader as `oe_eval/dependencies/AGIEval`): passage + "Q: " +
question + " Answer Choices: " + the options as given ("(A)2 (B)4 ...") joined by spaces, without that function's
closing "\nA: Among A through E, the answer is" -- the kit's reading of OLMES's `prompt_style: no_answer_prefix`
(OLMES's `agi_eval.py` itself could not be read here).
"""

from __future__ import annotations

from dataclasses import dataclass

from tulu_kit.evals import cot_mc
from tulu_kit.evals.core import EvalConfig, Scored, finish, select_subset, take
from tulu_kit.evals.data import require_file
from tulu_kit.io import iter_jsonl

NAME = "agieval"
TASKS = ["aqua-rat", "gaokao-english", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-en", "sat-math"]
FILE = "agieval/v1/{task}.jsonl"
URL = "https://raw.githubusercontent.com/ruixiangcui/AGIEval/5c77d073fda993f1652eaae3cf5d04cc5fd21d40/data/v1/{task}.jsonl"
PROTOCOL = {
    "shots": 0,
    "prompt": "chat: tulu3 description + {passage}Q: {q} Answer Choices: (A).. (B).. + final description",
    "decoding": "greedy, 2048 new tokens, no stop sequence",
    "extraction": "last 'Therefore, the answer is (X)', else OLMES's fallbacks (answer is X / Answer: X / last letter)",
    "metric": "exact match per task, macro average over the 8 English tasks",
    "source": "OLMES agi_eval_english:0shot_cot::tulu3 (task_configs.py, task_suites.py); ruixiangcui/AGIEval v1",
    "data": "agieval/v1/<task>.jsonl",
}


@dataclass
class AGIEvalConfig(EvalConfig):
    """AGIEval English settings; `subset` picks tasks, `max_examples` is per task."""

    out_dir: str = "../runs/lab/eval_agieval"
    chat: bool = True  # the tulu3 configs use the chat format


CONFIG = AGIEvalConfig


def question_block(row: dict) -> str:
    """AGIEval's convert_zero_shot (English), without its answer prefix."""
    passage = row.get("passage") or ""
    return passage + "Q: " + row["question"] + " " + "Answer Choices: " + " ".join(row["options"])


def build_prompt(row: dict) -> str:
    return cot_mc.description(cot_mc.MANY) + question_block(row) + cot_mc.final_description(cot_mc.MANY)


def load_task(data_dir: str | None, task: str) -> list[dict]:
    path = require_file(data_dir, FILE.format(task=task), NAME)
    rows = []
    for n, row in iter_jsonl(path):
        for k in ("question", "options", "label"):
            if k not in row:
                raise ValueError(f"{path}: line {n}: missing field {k!r}")
        label = str(row["label"]).strip()
        if len(label) != 1 or label not in cot_mc.LETTERS[: len(row["options"])]:
            raise ValueError(f"{path}: line {n}: label {row['label']!r} is not one of the option letters")
        ex = {"id": f"{task}/{n - 1}", "group": task, "question": row["question"], "gold": label,
              "n_choices": len(row["options"]), "passage": row.get("passage"), "options": row["options"]}  # fmt: skip
        ex["text"] = build_prompt(ex)
        rows.append(ex)
    return rows


def load_examples(data_dir: str | None, subset: str = "") -> list[dict]:
    return [e for t in select_subset(TASKS, subset, "AGIEval tasks") for e in load_task(data_dir, t)]


def score_predictions(preds: list[dict], data_dir: str | None = None) -> Scored:
    """Records with 'id' ("<task>/<line>") or 'question', and 'output'."""
    return cot_mc.score(NAME, preds, load_examples(data_dir), PROTOCOL, "agieval/v1", macro=True)


def run(cfg: AGIEvalConfig, backend=None) -> dict:
    examples = [
        e
        for t in select_subset(TASKS, cfg.subset, "AGIEval tasks")
        for e in take(load_task(cfg.data_dir, t), cfg.max_examples, cfg.seed)
    ]
    preds, params = cot_mc.generate(cfg, examples, backend)
    scored = score_predictions([{"id": p["id"], "output": p["output"]} for p in preds], cfg.data_dir)
    return finish(cfg, scored, cfg.sampling(params))
