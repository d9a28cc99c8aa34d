"""BIG-Bench Hard: 3-shot chain of thought per task, "the answer is" extraction, mean over tasks (`eval/bbh.ipynb`).

Suzgun et al. 2022 ("Challenging BIG-Bench Tasks and Whether Chain-of-Thought Can Solve Them", arXiv 2210.09261,
github.com/suzgunmirac/BIG-Bench-Hard): each of the 27 tasks has its own 3-exemplar CoT prompt
(`cot-prompts/<task>.txt`). As in open-instruct's `eval/bbh/run_eval.py`: prompt = task prompt + "\\n\\nQ: {input}"
+ "\\nA:", greedy decoding, 512 new tokens, stop at a blank line (not in chat mode); the prediction is the text
between "the answer is" and the next period (else the first paragraph of the output); exact match ignoring case
and punctuation -- except where punctuation is the answer (dyck_languages' brackets, a number's sign), see
`normalize`; the score is the mean of the per-task accuracies.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from tulu_kit.evals.core import (
    EvalConfig,
    GenParams,
    Scored,
    draw,
    finish,
    generate_predictions,
    make_metrics,
    norm_text,
    require_file,
    select_subset,
)
from tulu_kit.io import read_json

NAME = "bbh"
DATA = "bbh"  # under the data root: what the score depends on (hashed into the manifest)
PROTOCOL = {
    "shots": "3 chain-of-thought exemplars per task (cot-prompts/<task>.txt)",
    "prompt": "{task prompt}\\n\\nQ: {input}\\nA:",
    "decoding": "greedy, 512 new tokens, stop '\\n\\n' (not in chat mode)",
    "extraction": "regex '[tT]he answer is (.*?)\\.', else the first paragraph",
    "metric": "exact match ignoring case and punctuation, but brackets on dyck_languages and sign/point on numbers;"
    " mean over the 27 tasks",
    "source": "suzgunmirac/BIG-Bench-Hard; open-instruct eval/bbh/run_eval.py",
    "data": "bbh/bbh/<task>.json, bbh/cot-prompts/<task>.txt",
}


@dataclass
class BBHConfig(EvalConfig):
    """BBH settings; max_examples and subset apply per task (open-instruct ran 40 per task)."""

    out_dir: str = "../runs/lab/eval_bbh"
    max_examples: int | None = 40  # examples per task (open-instruct: 40; None: all)
    subset: str = "open-instruct"  # open-instruct's seeded sample (tasks in sorted order); "" = nested draw


CONFIG = BBHConfig

_ANSWER = re.compile(r"[tT]he answer is (.*?)\.(?:\s|$)")
# Where punctuation *is* the answer, exact match keeps it (open-instruct strips all punctuation, so every
# bracket-only answer matched on dyck_languages and "-12" matched "12"): the characters kept per task.
_BRACKETS = "()[]{}<>"
KEEP = {"dyck_languages": _BRACKETS, "multistep_arithmetic_two": "-.", "object_counting": "-."}


def extract_answer(output: str) -> str:
    """Text after 'the answer is' up to the next period; else the output's first paragraph."""
    m = _ANSWER.search(output)
    if m:
        return m.group(1).strip()
    return output.strip().split("\n\n")[0].strip()


def normalize(text: str, task: str = "") -> str:
    """Lower case, whitespace collapsed, punctuation removed except what carries the answer in `task`.

    As open-instruct (HF `exact_match`, ignore_case + ignore_punctuation) everywhere but: dyck_languages
    compares the bracket sequence (spaces ignored), and the arithmetic/counting tasks keep the sign and the
    decimal point. So "A" still matches "(A)" and "a, b" matches "a b" (word_sorting), as in open-instruct.
    """
    keep = KEEP.get(task, "")
    if task == "dyck_languages":
        return "".join(c for c in text if c in _BRACKETS)
    table = str.maketrans("", "", "".join(c for c in string.punctuation if c not in keep))
    out = " ".join(text.lower().translate(table).split())
    return out.rstrip(".") if keep else out


def is_correct(pred: str, target: str, task: str) -> bool:
    """Exact match after `normalize`; on the numeric tasks a number equal in value counts too ("24.0" = "24":
    open-instruct's regex stops at the first period, so it read "24" there; lm-eval scores it wrong)."""
    if normalize(pred, task) == normalize(target, task):
        return True
    if task in ("multistep_arithmetic_two", "object_counting"):
        try:
            return float(normalize(pred, task)) == float(normalize(target, task))
        except ValueError:
            return False
    return False


def tasks(data_dir: str | None) -> list[str]:
    folder = require_file(data_dir, "bbh/bbh", NAME)
    return sorted(p.stem for p in folder.glob("*.json"))


def task_prompt(data_dir: str | None, task: str, n_shot: int | None = None) -> str:
    """The CoT prompt file without its canary lines, cut to `n_shot` exemplars when asked."""
    path = require_file(data_dir, f"bbh/cot-prompts/{task}.txt", NAME)
    text = "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[2:]).strip()
    if n_shot is None:
        return text
    parts = re.split(r"\n\n(?=Q: )", text)
    return "\n\n".join(parts[: 1 + n_shot])


def load_task(data_dir: str | None, task: str) -> list[dict]:
    path = require_file(data_dir, f"bbh/bbh/{task}.json", NAME)
    data = read_json(path)
    rows = []
    for i, ex in enumerate(data.get("examples", [])):
        if "input" not in ex or "target" not in ex:
            raise ValueError(f"{path}: example {i}: expected fields 'input' and 'target'")
        rows.append({"id": f"{task}/{i}", "task": task, "input": ex["input"], "target": ex["target"]})
    return rows


def build_prompt(example: dict, prompt: str, chat: bool) -> tuple[str, str]:
    text = prompt + "\n\nQ: " + example["input"]
    return (text, "A:") if chat else (text + "\n", "A:")


def score_predictions(preds: list[dict], data_dir: str | None = None) -> Scored:
    """Records with 'task', 'input' and 'output' (and optionally 'id' = '<task>/<index>'), matched to the targets."""
    gold: dict[str, dict] = {}
    for t in {p.get("task") for p in preds}:
        if t not in tasks(data_dir):
            raise ValueError(
                f"unknown BBH task {t!r} in predictions (each record needs 'task', 'input', 'output')"
            )
        for row in load_task(data_dir, t):
            gold[row["id"]] = row
            gold.setdefault(f"{t}|{norm_text(row['input'])}", row)
    verdicts, values, groups = [], [], {}
    for n, p in enumerate(preds, 1):
        if "input" not in p or "output" not in p:
            raise ValueError(f"prediction {n}: needs fields 'task', 'input' and 'output'")
        # by id when given: causal_judgement holds two inputs twice with different targets
        g = gold.get(str(p.get("id"))) or gold.get(f"{p['task']}|{norm_text(p['input'])}")
        if g is None:
            raise ValueError(f"prediction {n}: input {p['input'][:60]!r}... is not in bbh/{p['task']}.json")
        pred = extract_answer(str(p["output"]))
        ok = is_correct(pred, g["target"], g["task"])
        values.append(float(ok))
        groups.setdefault(g["task"], []).append(float(ok))
        verdicts.append(
            {"id": g["id"], "task": g["task"], "gold": g["target"], "extracted": pred, "correct": ok}
        )
    metrics = make_metrics(
        NAME, "exact_match", values, PROTOCOL, groups=dict(sorted(groups.items())), macro=True
    )
    return Scored(metrics, verdicts)


def run(cfg: BBHConfig, backend=None) -> dict:
    """Generate CoT answers for every task (max_examples per task), score, write metrics.json."""
    names = select_subset(tasks(cfg.data_dir), cfg.subset, "BBH tasks")
    prompts = {t: task_prompt(cfg.data_dir, t, cfg.n_shot) for t in names}
    examples = draw(cfg, [load_task(cfg.data_dir, t) for t in names])
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 512, stop=() if cfg.chat else ("\n\n",))
    build = lambda e, chat: build_prompt(e, prompts[e["task"]], chat)  # noqa: E731
    preds = generate_predictions(cfg, examples, build, params, backend)
    return finish(cfg, score_predictions(preds, cfg.data_dir), cfg.sampling(params))
