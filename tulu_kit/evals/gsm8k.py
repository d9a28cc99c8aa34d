"""GSM8K: 8-shot chain of thought, last number in the output, exact match (notebook `eval/gsm8k.ipynb`).

Protocol as open-instruct ran it (`eval/gsm/run_eval.py`): the 8 chain-of-thought exemplars of Wei et al. 2022
("Chain-of-Thought Prompting Elicits Reasoning in Large Language Models", arXiv 2201.11903, Table 20), prompt
"Answer the following questions.\\n\\n" + "Question: ...\\nAnswer: ..." blocks, greedy decoding, 512 new tokens,
stop at "\\n" without the chat format. The prediction is the last number of the output with thousands commas
removed; it is compared numerically with the number after "####" in the gold answer (Cobbe et al. 2021,
"Training Verifiers to Solve Math Word Problems", arXiv 2110.14168).
"""

from __future__ import annotations

import re
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

NAME = "gsm8k"
FILE = "gsm8k/test.jsonl"

# Wei et al. 2022, Table 20 (the exemplars open-instruct's eval/gsm/examplars.py also uses)
EXEMPLARS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
        "been 21 - 15 = 6. So the answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
        "they had 74 - 35 = 39. So the answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
        "Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
        "So the answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
        "now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
        "5 + 4 = 9. So the answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday "
        "to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
        "computers were added. 9 + 20 is 29. So the answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
        "balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 "
        "more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
        "dollars left. 23 - 15 is 8. So the answer is 8.",
    ),
]

PROTOCOL = {
    "shots": 8,
    "prompt": "Answer the following questions.\\n\\nQuestion: {q}\\nAnswer: {cot}\\n\\n... Question: {q}\\nAnswer:",
    "decoding": "greedy, 512 new tokens, stop '\\n' (not in chat mode)",
    "extraction": "last number in the output, thousands commas removed",
    "metric": "exact match (numeric), mean over examples",
    "source": "open-instruct eval/gsm/run_eval.py; exemplars: Wei et al. 2022 Table 20",
    "data": FILE,
}


@dataclass
class GSM8KConfig(EvalConfig):
    """GSM8K settings; the shared EvalConfig fields only."""

    out_dir: str = "../runs/lab/eval_gsm8k"
    max_examples: int | None = 200  # examples (open-instruct: 200 of 1,319; None: all)
    subset: str = "open-instruct"  # open-instruct's seeded sample (its 200 ids); "" = the kit's nested draw


CONFIG = GSM8KConfig

_COMMA = re.compile(r"(\d),(\d)")
# a leading minus only when not glued to a word or digit ("3-4" is a range, not -4)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+(?:\.\d+)?|\.\d+)|(?:\d+(?:\.\d+)?|\.\d+)")


def extract_answer(text: str) -> str | None:
    """The last number in `text` ("1,234.50" -> "1234.50", "-3" -> "-3", "$18." -> "18"), or None."""
    numbers = _NUMBER.findall(_drop_commas(text))
    return numbers[-1] if numbers else None


def _drop_commas(text: str) -> str:
    return _COMMA.sub(r"\1\2", _COMMA.sub(r"\1\2", text))  # twice: in "1,2,3" the matches overlap


def gold_answer(answer_field: str) -> str:
    """The number after '####' in a GSM8K answer, commas removed."""
    return _drop_commas(answer_field.split("####")[-1].strip())


def is_correct(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    try:
        return abs(float(pred) - float(gold)) < 1e-6
    except ValueError:
        return pred.strip() == gold.strip()


def load_examples(data_dir: str | None) -> list[dict]:
    path = require_file(data_dir, FILE, NAME)
    examples = []
    for n, row in iter_jsonl(path):
        if "question" not in row or "####" not in row.get("answer", ""):
            raise ValueError(f"{path}:{n}: expected fields 'question' and 'answer' with '#### <number>'")
        examples.append({"id": str(n - 1), "question": row["question"], "answer": gold_answer(row["answer"])})
    return examples


def build_prompt(example: dict, chat: bool = False, n_shot: int = 8) -> tuple[str, str]:
    """(user text, answer prefix): the open-instruct prompt, which ends with 'Answer:'."""
    demos = [f"Question: {q}\nAnswer: {a}" for q, a in EXEMPLARS[:n_shot]]
    head = "Answer the following questions.\n\n" if n_shot else "Answer the following question.\n\n"
    body = head + "".join(d + "\n\n" for d in demos) + "Question: " + example["question"].strip()
    return (body, "Answer:") if chat else (body + "\n", "Answer:")


def score_predictions(preds: list[dict], data_dir: str | None = None) -> Scored:
    """Score records with 'question' and 'output'; gold answers come from the official test file."""
    gold = load_examples(data_dir)
    matched = match_gold(preds, gold, ("question",), FILE)
    verdicts, values = [], []
    for p, g in zip(preds, matched):
        pred = extract_answer(str(p["output"]))
        ok = is_correct(pred, g["answer"])
        values.append(float(ok))
        verdicts.append({"id": g["id"], "gold": g["answer"], "extracted": pred, "correct": ok})
    return Scored(make_metrics(NAME, "exact_match", values, PROTOCOL), verdicts)


def run(cfg: GSM8KConfig, backend=None) -> dict:
    """Generate 8-shot CoT answers for (a subset of) GSM8K test, score them, write metrics.json."""
    examples = draw(cfg, [load_examples(cfg.data_dir)])
    n_shot = 8 if cfg.n_shot is None else cfg.n_shot
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 512, stop=() if cfg.chat else ("\n",))
    preds = generate_predictions(
        cfg, examples, lambda e, chat: build_prompt(e, chat, n_shot), params, backend
    )
    return finish(cfg, score_predictions(preds, cfg.data_dir), cfg.sampling(params))
