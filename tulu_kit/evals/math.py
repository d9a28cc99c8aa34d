"""MATH (MATH-500 by default): 4-shot Minerva prompt, answer equivalence with math-verify (`eval/math.ipynb`).

Prompt and extraction follow Minerva (Lewkowycz et al. 2022, "Solving Quantitative Reasoning Problems with
Language Models", arXiv 2206.14858, appendix D) as lm-evaluation-harness's `minerva_math` task implements them,
which is also what open-instruct's `eval/MATH/run_eval.py` uses: exemplars "Problem:\\n{p}\\n\\nSolution: {s}"
whose solutions end "Final Answer: The final answer is $X$. I hope it is correct.", greedy decoding, 1024 new
tokens, stop at "Problem:". The answer is the Minerva "final answer" sentence, else the last `\\boxed{}`. It is
correct when the Minerva-normalized strings match (Hendrycks et al. 2021 `is_equiv`) or when math-verify
(HuggingFace, https://github.com/huggingface/Math-Verify) finds the two expressions equivalent.
"""

from __future__ import annotations

from dataclasses import dataclass

from tulu_kit.evals.core import (
    EvalConfig,
    GenParams,
    Scored,
    draw,
    finish,
    generate_predictions,
    make_metrics,
    match_gold,
    require_file,
)
from tulu_kit.io import iter_jsonl

NAME = "math"
FILE = "math500/test.jsonl"

PROTOCOL = {
    "shots": 4,
    "prompt": "Problem:\\n{problem}\\n\\nSolution: {solution ... Final Answer: The final answer is $X$. "
    "I hope it is correct.}\\n\\n ... Problem:\\n{problem}\\n\\nSolution:",
    "decoding": "greedy, 1024 new tokens, stop 'Problem:'",
    "extraction": "Minerva 'The final answer is X', else the last \\boxed{}",
    "metric": "accuracy: Minerva-normalized string match or math-verify equivalence",
    "source": "lm-eval minerva_math (prompt, normalization); open-instruct eval/MATH; math-verify",
    "data": FILE,
}


@dataclass
class MATHConfig(EvalConfig):
    """MATH settings: the shared EvalConfig fields, the draw and the answer check."""

    out_dir: str = "../runs/lab/eval_math"
    max_examples: int | None = 200  # problems (open-instruct: 200; None: all 500)
    # open-instruct's draw (its code, seed 42); open-instruct drew from the 5,000-problem MATH test, so on
    # MATH-500 the ids are its algorithm's, not its problems
    subset: str = "open-instruct"
    # an output without the Minerva sentence or \boxed{}: math-verify the whole text (lm-eval's math_verify);
    # False: Minerva extraction only (open-instruct)
    whole_output: bool = True


CONFIG = MATHConfig


def _minerva():
    # lm-eval's minerva_math utilities (imported lazily: lm_eval takes ~1.5 s to import)
    from lm_eval.tasks.minerva_math import utils

    return utils


def exemplars() -> list[tuple[str, str]]:
    """The four Minerva exemplars (problem, solution ending in the final-answer sentence)."""
    return [(s["problem"], s["solution"]) for s in _minerva().list_fewshot_samples()]


def build_prompt(example: dict, chat: bool = False, n_shot: int = 4) -> tuple[str, str]:
    demos = [f"Problem:\n{p}\n\nSolution: {s}" for p, s in exemplars()[:n_shot]]
    query = f"Problem:\n{example['problem'].strip()}\n\nSolution:"
    return "\n\n".join(demos + [query]), ""


def extract_answer(output: str) -> str | None:
    """The Minerva final answer ("The final answer is $X$. I hope it is correct."), else the last \\boxed{}."""
    mu = _minerva()
    text = mu.get_unnormalized_answer(output)
    if text != "[invalidanswer]":
        return text
    boxed = mu.last_boxed_only_string(output)
    if boxed is None:
        return None
    try:
        return mu.remove_boxed(boxed)
    except AssertionError:
        return None


def verify_output(output: str, gold: str) -> bool:
    """math-verify on the whole output, as lm-eval's minerva_math `math_verify` metric does (it parses the last
    expression: "The final answer is $X$." without "Final Answer:" or \\boxed{} is accepted there)."""
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(output)))
    except Exception:  # math-verify parses arbitrary model text; a failure means "not shown equivalent"
        return False


def is_equiv(pred: str | None, gold: str) -> bool:
    """Minerva-normalized string match (Hendrycks strip_string), else math-verify equivalence."""
    if pred is None:
        return False
    from lm_eval.tasks.hendrycks_math.utils import is_equiv as hendrycks_equiv
    from math_verify import parse, verify

    norm = _minerva().normalize_final_answer
    if hendrycks_equiv(norm(pred), norm(gold)):
        return True
    try:
        return bool(verify(parse(f"${gold}$"), parse(f"${pred}$")))
    except Exception:  # math-verify parses arbitrary model text; a failure means "not shown equivalent"
        return False


def load_examples(data_dir: str | None) -> list[dict]:
    """MATH-500 (`problem`, `solution`, `answer`, `subject`, `level`, `unique_id`) or full-MATH records
    (`problem`, `solution`, `type`, `level`: the answer is the solution's last \\boxed{})."""
    path = require_file(data_dir, FILE, NAME)
    examples = []
    for n, row in iter_jsonl(path):
        if "problem" not in row or "solution" not in row:
            raise ValueError(f"{path}:{n}: expected fields 'problem' and 'solution'")
        answer = row.get("answer")
        if answer is None:
            answer = extract_answer(row["solution"])
        if answer is None:
            raise ValueError(f"{path}:{n}: no field 'answer' and no \\boxed{{}} answer in field 'solution'")
        examples.append(
            {
                "id": str(row.get("unique_id", n - 1)),
                "problem": row["problem"],
                "answer": answer,
                "subject": row.get("subject", row.get("type", "")),
                "level": row.get("level"),
            }
        )
    return examples


def score_predictions(preds: list[dict], data_dir: str | None = None, whole_output: bool = True) -> Scored:
    """Score records with 'problem' (or 'question') and 'output' against the official answers.

    `whole_output`: an output with neither the Minerva sentence nor a \\boxed{} is still checked by math-verify
    on the whole text, as lm-eval's minerva_math `math_verify` metric does; False restores the Minerva-only
    extraction (open-instruct's, where "The final answer is $X$." alone scores wrong)."""
    gold = load_examples(data_dir)
    for g in gold:
        g["question"] = g["problem"]
    matched = match_gold(preds, gold, ("problem", "question"), FILE)
    verdicts, values, by_subject = [], [], {}
    for p, g in zip(preds, matched):
        pred = extract_answer(str(p["output"]))
        ok = is_equiv(pred, g["answer"])
        if (
            not ok and pred is None and whole_output
        ):  # no Minerva sentence, no \boxed{}: lm-eval's math_verify
            ok = verify_output(str(p["output"]), g["answer"])
        values.append(float(ok))
        by_subject.setdefault(g["subject"], []).append(float(ok))
        verdicts.append(
            {"id": g["id"], "subject": g["subject"], "gold": g["answer"], "extracted": pred, "correct": ok}
        )
    metrics = make_metrics(NAME, "accuracy", values, PROTOCOL, groups=dict(sorted(by_subject.items())))
    return Scored(metrics, verdicts)


def run(cfg: MATHConfig, backend=None) -> dict:
    """Generate 4-shot Minerva solutions for (a subset of) MATH-500, score them, write metrics.json."""
    examples = draw(cfg, [load_examples(cfg.data_dir)])
    n_shot = 4 if cfg.n_shot is None else cfg.n_shot
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 1024, stop=("Problem:",))
    preds = generate_predictions(
        cfg, examples, lambda e, chat: build_prompt(e, chat, n_shot), params, backend
    )
    return finish(cfg, score_predictions(preds, cfg.data_dir, cfg.whole_output), cfg.sampling(params))
