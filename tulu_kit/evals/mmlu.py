"""MMLU: 0- or 5-shot, the probability of the answer letter (notebook `eval/mmlu.ipynb`).

Protocol of Hendrycks et al. 2021 ("Measuring Massive Multitask Language Understanding", arXiv 2009.03300,
github.com/hendrycks/test `evaluate.py`) as open-instruct ran it (`eval/mmlu/run_eval.py`): the header "The
following are multiple choice questions (with answers) about {subject}.", k dev-set exemplars, the question with
"A. .. D." options and "Answer:"; in chat mode the assistant turn starts "The answer is:". The prediction is the
letter whose token (" A" .. " D") has the highest next-token probability. Accuracy over all questions (micro).

``form: rc`` is the cloze formulation, for models too small to map an answer to its letter (at chance in the letter
form; OLMES, Gu et al. 2024, arXiv 2406.08446, scores both forms and keeps the better): the same header, the
question as OLMES's ``make_cloze_prompt`` writes it ("Question: {q}\nAnswer:", no options), and each choice's text
(" Cairo") scored as a continuation. The prediction is the choice with the highest log-likelihood per character of
its text, lm-eval's ``acc_norm`` rule (``argmax(lls / len(choice))``, the space before it not counted), so a long
choice is not penalised for its length; the metric is named ``acc_norm``. lm-eval's own cloze task
(``mmlu_continuation``) differs in its prompt: "The following are questions (with answers) about ..." (no
"multiple choice"), and with a chat template no "The answer is:". OLMES's MMLU is 5-shot: ``n_shot=5``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tulu_kit.evals.core import (
    OPEN_INSTRUCT,
    Backend,
    EvalConfig,
    Scored,
    chat_prompt,
    finish,
    make_metrics,
    norm_text,
    predict,
    require_file,
    select_subset,
    take,
)

NAME = "mmlu"
DATA = "mmlu"  # under the data root: what the score depends on (hashed into the manifest)
LETTERS = ["A", "B", "C", "D"]
PROTOCOL = {
    "shots": "0 (default) or 5 dev-set exemplars",
    "prompt": "The following are multiple choice questions (with answers) about {subject}.\\n\\n{q}\\nA. ..\\n"
    "D. ..\\nAnswer:  (chat: + assistant 'The answer is:')",
    "decoding": "none: next-token log-probability of ' A', ' B', ' C', ' D'",
    "extraction": "argmax over the four letters",
    "metric": "accuracy over all questions (micro average)",
    "source": "hendrycks/test evaluate.py; open-instruct eval/mmlu/run_eval.py",
    "data": "mmlu/dev/*_dev.csv, mmlu/test/*_test.csv",
}
CLOZE_PROTOCOL = {  # form rc
    **PROTOCOL,
    "prompt": "The following are multiple choice questions (with answers) about {subject}.\\n\\nQuestion: {q}\\n"
    "Answer:  (chat: + assistant 'The answer is:')",
    "decoding": "none: log-likelihood of each option's text ' {choice}' after the prompt",
    "extraction": "argmax of log-likelihood / len(choice) (lm-eval acc_norm)",
    "shots": "0 (default) or 5 dev-set exemplars, each answered with its text (OLMES: 5)",
    "metric": "acc_norm: accuracy of the per-character argmax over all questions (micro average)",
    "source": "OLMES make_cloze_prompt (Gu et al. 2024, arXiv 2406.08446) after hendrycks/test's header; lm-eval's "
    "acc_norm rule",
}


@dataclass
class MMLUConfig(EvalConfig):
    """MMLU settings; `n_shot` None means 0-shot (Tulu 2's headline MMLU); max_examples is per subject."""

    out_dir: str = "../runs/lab/eval_mmlu"
    max_examples: int | None = None  # questions per subject (None: all 14,042)
    # open-instruct: its header exactly, "about  abstract algebra" (hendrycks/test's format_subject puts a space
    # before each word); lm-eval: one space. The two differ by that one character only.
    prompt_style: Literal["open-instruct", "lm-eval"] = "open-instruct"
    # mc: the options listed, the answer letter's probability (open-instruct, Tulu); rc: OLMES's cloze formulation,
    # each option's text scored per character (small models, which are at chance in the letter form)
    form: Literal["mc", "rc"] = "mc"

    def __post_init__(self):
        check_form(self.form)  # also when built in Python, not through a recipe or `tulu-kit eval`

    # subset "open-instruct" + max_examples: open-instruct's per-subject draw (test_df.sample(n, random_state=seed))


CONFIG = MMLUConfig


def read_csv(path: Path) -> list[dict]:
    """Rows of an MMLU CSV: the original format (no header, answer letter) or a header + 0-3 answer index."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    if table and table[0][:2] == ["question", "choice0"]:
        table = table[1:]
    for n, r in enumerate(table, 1):
        if len(r) != 6:
            raise ValueError(
                f"{path}: row {n}: expected 6 columns (question, 4 choices, answer), got {len(r)}"
            )
        ans = r[5].strip()
        if ans in LETTERS:
            idx = LETTERS.index(ans)
        elif ans in ("0", "1", "2", "3"):
            idx = int(ans)
        else:
            raise ValueError(f"{path}: row {n}: field answer must be A-D or 0-3, got {ans!r}")
        rows.append({"question": r[0], "choices": r[1:5], "answer": LETTERS[idx]})
    return rows


def subjects(data_dir: str | None) -> list[str]:
    test_dir = require_file(data_dir, "mmlu/test", NAME)
    return sorted(p.name[: -len("_test.csv")] for p in test_dir.glob("*_test.csv"))


def load_subject(data_dir: str | None, subject: str) -> tuple[list[dict], list[dict]]:
    dev = read_csv(require_file(data_dir, f"mmlu/dev/{subject}_dev.csv", NAME))
    test = read_csv(require_file(data_dir, f"mmlu/test/{subject}_test.csv", NAME))
    for i, row in enumerate(test):
        row.update(id=f"{subject}/{i}", subject=subject)
    return dev, test


def format_example(row: dict, with_answer: bool, form: str = "mc") -> str:
    if form == "rc":  # OLMES make_cloze_prompt: no options, the answer's text after "Answer:"
        text = f"Question: {row['question']}\nAnswer:"
        return text + (f" {answer_text(row)}\n\n" if with_answer else "")
    text = row["question"] + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, row["choices"])) + "\nAnswer:"
    return text + (f" {row['answer']}\n\n" if with_answer else "")


def answer_text(row: dict) -> str:
    """The text of the right choice (what ``form: rc`` scores)."""
    return row["choices"][LETTERS.index(row["answer"])]


def build_prompt(
    row: dict, dev: list[dict], n_shot: int, style: str = "open-instruct", form: str = "mc"
) -> str:
    words = row["subject"].split("_")
    # open-instruct (hendrycks/test): "about {}".format(" abstract algebra") -- two spaces; lm-eval: one
    subject = "".join(" " + w for w in words) if style == "open-instruct" else " ".join(words)
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return (
        head + "".join(format_example(d, True, form) for d in dev[:n_shot]) + format_example(row, False, form)
    )


def load_examples(cfg: MMLUConfig) -> tuple[list[dict], dict[str, list[dict]]]:
    examples, devs = [], {}
    for subject in select_subset(subjects(cfg.data_dir), cfg.subset, "MMLU subjects"):
        dev, test = load_subject(cfg.data_dir, subject)
        devs[subject] = dev
        if OPEN_INSTRUCT in cfg.subset and cfg.max_examples is not None and cfg.max_examples < len(test):
            import pandas as pd  # open-instruct: test_df.sample(args.n_instances, random_state=42)

            picked = pd.DataFrame(range(len(test))).sample(cfg.max_examples, random_state=cfg.seed)[0]
            examples += [test[i] for i in picked]
        else:
            examples += take(test, cfg.max_examples, cfg.seed)
    return examples, devs


FORMS = ("mc", "rc")


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(
            f"form must be one of {FORMS} (mc: the answer letter, rc: the cloze form), got {form!r}"
        )


def score_predictions(preds: list[dict], data_dir: str | None = None, form: str = "mc") -> Scored:
    """Records with 'question' (+ optional 'id', 'subject', 'choices') and one of: 'prediction' (a letter), 'logprobs'
    (four numbers, A-D) or 'output' (text whose first standalone A-D letter is the answer). ``form="rc"``: the
    cloze form's records, 'prediction' or 'per_char' (each choice's log-likelihood per character, A-D)."""
    check_form(form)
    index: dict[str, dict] = {}
    for subject in subjects(data_dir):
        for row in load_subject(data_dir, subject)[1]:
            q = norm_text(row["question"])
            index[row["id"]] = row
            for key in (f"{subject}|{q}|{row['choices']}", f"{subject}|{q}", q):
                index.setdefault(key, row)
    verdicts, values, groups = [], [], {}
    for n, p in enumerate(preds, 1):
        if "question" not in p:
            raise ValueError(f"prediction {n}: needs a 'question' field")
        # most specific key first: some questions recur in a subject with other choices
        q, sub = norm_text(p["question"]), p.get("subject")
        keys = [str(p.get("id")), f"{sub}|{q}|{p.get('choices')}", f"{sub}|{q}", q]
        gold = next((index[k] for k in keys if k in index), None)
        if gold is None:
            raise ValueError(f"prediction {n}: question {p['question'][:60]!r}... is not in mmlu/test")
        if form == "mc" and "per_char" in p:
            raise ValueError(
                f"prediction {n}: has 'per_char', the cloze form's scores: score it with form=rc"
            )
        if form == "rc" and "per_char" not in p and p.get("prediction") is None:
            raise ValueError(f"prediction {n}: form rc needs 'prediction' or 'per_char' (A-D, per character)")
        letter = _letter(p, n)
        ok = letter == gold["answer"]
        values.append(float(ok))
        groups.setdefault(gold["subject"], []).append(float(ok))
        verdicts.append(
            {
                "id": gold["id"],
                "subject": gold["subject"],
                "gold": gold["answer"],
                "predicted": letter,
                "correct": ok,
            }
        )
    metric, protocol = ("acc_norm", CLOZE_PROTOCOL) if form == "rc" else ("accuracy", PROTOCOL)
    return Scored(make_metrics(NAME, metric, values, protocol, groups=dict(sorted(groups.items()))), verdicts)


def _letter(p: dict, n: int) -> str | None:
    if p.get("prediction") is not None:
        text = str(p["prediction"]).strip()
        bare = text.strip("().").strip().upper()
        if len(bare) <= 1:  # "B", "(b)", "B."
            return bare or None
        m = re.search(r"\b([ABCD])\b", text)  # free text ("Answer: B"): the first standalone letter
        return m.group(1) if m else None
    # the letter of the highest score: per character of each answer (the cloze form), else the letter's log-prob
    for field in ("per_char", "logprobs"):
        if field in p:
            scores = p[field]
            if not isinstance(scores, list) or len(scores) != 4:
                raise ValueError(f"prediction {n}: field {field} must be a list of 4 numbers (A-D)")
            return LETTERS[max(range(4), key=lambda i: scores[i])]
    if "output" in p:
        m = re.search(r"\b([ABCD])\b", str(p["output"]))
        return m.group(1) if m else None
    raise ValueError(f"prediction {n}: needs 'prediction', 'logprobs' or 'output'")


def run(cfg: MMLUConfig, backend=None) -> dict:
    """Score the four answer letters (``form="rc"``: the four answers' texts) of (a subset of) MMLU test, write
    predictions and metrics.json."""
    examples, devs = load_examples(cfg)
    n_shot = 0 if cfg.n_shot is None else cfg.n_shot

    def text(e: dict) -> str:
        return build_prompt(e, devs[e["subject"]], n_shot, cfg.prompt_style, cfg.form)

    def compute(be: Backend, chunk: list[dict]) -> list[dict]:
        prompts = [
            chat_prompt(be.tokenizer, text(e), cfg.chat, "The answer is:" if cfg.chat else "") for e in chunk
        ]
        if cfg.form == "rc":
            return cloze(be, chunk, prompts)
        scores = be.choice_logprobs(prompts, LETTERS)
        return [
            {**e, "prompt": p, "logprobs": s, "prediction": LETTERS[max(range(4), key=lambda i: s[i])]}
            for e, p, s in zip(chunk, prompts, scores)
        ]

    preds = predict(cfg, examples, compute, backend, sort_key=lambda e: len(text(e)), prompt_of=text)
    return finish(cfg, score_predictions(preds, cfg.data_dir, cfg.form))


def cloze(be: Backend, chunk: list[dict], prompts: list[str]) -> list[dict]:
    """``form: rc``: each choice's text as a continuation of the prompt, in one batched call; the prediction is the
    letter of the highest log-likelihood per character of the choice (``choice_loglikelihoods`` keeps the sums,
    ``per_char`` the scores; lm-eval's ``acc_norm`` divides by ``len(choice)``, without the space before it)."""
    requests = [(p, " " + c) for e, p in zip(chunk, prompts) for c in e["choices"]]
    scores = iter(be.loglikelihood(requests))
    out = []
    for e, p in zip(chunk, prompts):
        sums = [next(scores)[0] for _ in e["choices"]]
        per_char = [s / max(len(c), 1) for s, c in zip(sums, e["choices"])]
        best = LETTERS[max(range(len(sums)), key=lambda i: per_char[i])]
        out.append(
            {**e, "prompt": p, "choice_loglikelihoods": sums, "per_char": per_char, "prediction": best}
        )
    return out
