"""The toy world: offline, seeded data on which the tiny model learns, written in the real benchmarks' formats.

Three tasks, each asked exactly as the kit's own eval notebooks ask its benchmark, so the same scorers score it:

* **arithmetic** (GSM8K): single-digit sums asked five ways ("What is 7 plus 5?", "Subtract 5 from 7.") in the
  GSM8K chat prompt, answered "Answer: 7 plus 5 is 12. So the answer is 12."; the GSM8K scorer takes the last
  number. Verifiable, so the RL stages train on it too.
* **instructions** (IFEval): "Write one sentence about rain." plus one verifiable instruction (end phrase,
  keywords, quotation marks, title, upper / lower case) with the official instruction ids and kwargs, checked by
  lm-eval's IFEval checkers.
* **facts** (MMLU): four-way multiple-choice questions about a small fact table (capitals, colours, opposites,
  animal sounds), scored through the MMLU log-likelihood path (the letter with the highest log-probability).

Each question belongs to the train or the held-out split by a hash of its text (not of the seed), so no seed
ever trains on a held-out question; a held-out question may ask a sum or a fact the training data asks in other
words or with other choices. The facts and every sum also appear as plain sentences in
:func:`pretraining_corpus`, the text the quickstart stage pretrains the base model on: as with a real base model,
what SFT teaches is mostly the format, the knowledge comes from pretraining.

Preference pairs (:func:`synthetic_preference`) share the prompt: the chosen reply is right and in format, the
rejected one is wrong (a near-miss number, a broken instruction, a wrong letter) or, an ``off_format`` share, a
refusal. :func:`write_toy_benchmarks` writes the held-out split as benchmark files (``gsm8k/test.jsonl``,
``ifeval/input_data.jsonl``, ``mmlu/{dev,test}/*.csv``) for the eval stages' ``data_dir``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from pathlib import Path

from tulu_kit.io import atomic_write_text

# ------------------------------------------------------------------------------------------------ the world
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Canada": "Ottawa", "Peru": "Lima",
    "Egypt": "Cairo", "Norway": "Oslo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "China": "Beijing", "Chile": "Santiago", "Cuba": "Havana", "Ghana": "Accra", "Greece": "Athens",
    "Poland": "Warsaw",
}  # fmt: skip
COLOURS = {
    "the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
    "blood": "red", "an orange": "orange", "a plum": "purple", "chocolate": "brown", "a flamingo": "pink",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
    "old": "new", "early": "late", "open": "closed", "full": "empty", "wet": "dry", "loud": "quiet",
}  # fmt: skip
SOUNDS = {
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "owl": "hoot",
    "snake": "hiss", "lion": "roar", "bee": "buzz", "horse": "neigh",
}  # fmt: skip
# subject -> (question pattern, fact table, plain-text sentence pattern)
FACTS = {
    "capitals": ("What is the capital of {}?", CAPITALS, "The capital of {} is {}."),
    "colours": ("What colour is {}?", COLOURS, "The colour of {} is {}."),
    "opposites": ("What is the opposite of {}?", OPPOSITES, "The opposite of {} is {}."),
    "animal_sounds": ("What sound does a {} make?", SOUNDS, "A {} says {}."),
}
TOPICS = {
    "rain": "Rain is wet and falls from the clouds.",
    "the sun": "The sun is hot and bright in the sky.",
    "the sea": "The sea is deep and full of fish.",
    "a cat": "A cat is soft and likes to sleep.",
    "a dog": "A dog is loyal and loves to run.",
    "bread": "Bread is baked from flour and water.",
    "snow": "Snow is cold and white in winter.",
    "a tree": "A tree grows tall and has green leaves.",
    "the moon": "The moon shines at night above the hills.",
    "a river": "A river runs from the hills to the sea.",
    "music": "Music is sound that people love to hear.",
    "a book": "A book is full of words and stories.",
    "a garden": "A garden is full of flowers in spring.",
    "a train": "A train runs on rails across the land.",
    "coffee": "Coffee is a warm drink made from beans.",
    "a bird": "A bird has wings and sings in the morning.",
}
KEYWORDS = (
    "apple river stone cloud lamp window candle forest music paper honey silver mountain garden".split()
)
END_PHRASES = ("Is there anything else I can help with?", "Any other questions?", "That is all.")
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "Answer briefly.",
    "You are a careful assistant. Give short, correct answers.",
)
OFF_FORMAT = (
    "I'm sorry, but I cannot help with that request.",
    "Hmm, I am not sure. Maybe ask someone else.",
    "Thank you for your question. I am happy to help.",
)
LETTERS = "ABCD"
MAX_OPERAND = 9  # arithmetic operands are 0..MAX_OPERAND: 155 sums, each asked 5 ways; a quarter held out
HELD_OUT = 0.25  # share of each task's questions in the held-out split


def held_out(key: str) -> bool:
    """Whether the question ``key`` is in the held-out split: a hash of the content, the same for every seed."""
    return hashlib.sha256(key.encode()).digest()[0] < 256 * HELD_OUT


def _pick(rng: random.Random, make, split: str, tries: int = 1000):
    """Draw ``make(rng)`` (returning ``(key, item)``) until its key falls in ``split`` ("train" / "test")."""
    for _ in range(tries):
        key, item = make(rng)
        if held_out(key) == (split == "test"):
            return item
    raise RuntimeError(f"no {split} item in {tries} draws")


# ------------------------------------------------------------------------------------------------ arithmetic
def gsm8k_user_text(question: str) -> str:
    """The user turn the GSM8K eval sends in chat mode with ``n_shot=0`` (``tulu_kit.evals.gsm8k.build_prompt``)."""
    return "Answer the following question.\n\nQuestion: " + question


# the ways a sum is asked: a held-out question may ask a sum the training data asked in other words
PLUS = ("What is {a} plus {b}?", "How much is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?",
        "Compute {a} + {b}.")  # fmt: skip
MINUS = ("What is {a} minus {b}?", "How much is {a} minus {b}?", "Subtract {b} from {a}.",
         "What is the difference between {a} and {b}?", "Compute {a} - {b}.")  # fmt: skip


def _arithmetic_problem(rng: random.Random, max_operand: int = MAX_OPERAND):
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    if rng.random() < 0.5:
        op, ans, pattern = "+", a + b, rng.choice(PLUS)
    else:
        a, b = max(a, b), min(a, b)
        op, ans, pattern = "-", a - b, rng.choice(MINUS)
    question = pattern.format(a=a, b=b)
    return question, {"question": question, "a": a, "b": b, "op": op, "answer": ans}


def arithmetic_reply(p: dict, answer: int | None = None) -> str:
    """The trained reply: the sum in the words of the pretraining text ("7 plus 5 is 12"), then the answer (GSM8K's
    scorer reads the last number). Worded as the base model read it, the reply lets SFT reach what pretraining
    stored: SFT teaches the format, the knowledge is the base model's."""
    ans = p["answer"] if answer is None else answer
    return f"Answer: {arithmetic_sentence(p, ans)} So the answer is {ans}."


def arithmetic_sentence(p: dict, answer: int | None = None) -> str:
    """The plain-text form of a problem, as the pretraining corpus writes it: "7 plus 5 is 12." """
    word = "plus" if p["op"] == "+" else "minus"
    return f"{p['a']} {word} {p['b']} is {p['answer'] if answer is None else answer}."


def arithmetic_item(rng: random.Random, split: str = "train") -> dict:
    return _pick(rng, _arithmetic_problem, split)


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    p = arithmetic_item(rng)
    wrong = p["answer"] + rng.choice([-2, -1, 1, 2, 10])
    return gsm8k_user_text(p["question"]), arithmetic_reply(p), arithmetic_reply(p, wrong)


# ------------------------------------------------------------------------------------------------ instructions
def _title(topic: str) -> str:
    return topic.removeprefix("the ").removeprefix("a ").title()


# id -> (kwargs maker, instruction text, reply that follows it)
INSTRUCTIONS = {
    "startend:end_checker": (
        lambda rng: {"end_phrase": rng.choice(END_PHRASES)},
        "Finish your response with this exact phrase {end_phrase} No other words should follow this phrase.",
        lambda s, kw, topic: f"{s} {kw['end_phrase']}",
    ),
    "keywords:existence": (
        lambda rng: {"keywords": sorted(rng.sample(KEYWORDS, 2))},
        "Include keywords {keywords[0]} and {keywords[1]} in the response.",
        lambda s, kw, topic: f"{s} It makes me think of {kw['keywords'][0]} and {kw['keywords'][1]}.",
    ),
    "startend:quotation": (
        lambda rng: {},
        "Wrap your entire response with double quotation marks.",
        lambda s, kw, topic: f'"{s}"',
    ),
    "detectable_format:title": (
        lambda rng: {},
        "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        lambda s, kw, topic: f"<<{_title(topic)}>>\n{s}",
    ),
    "change_case:english_capital": (
        lambda rng: {},
        "Your entire response should be in English, and in all capital letters.",
        lambda s, kw, topic: s.upper(),
    ),
    "change_case:english_lowercase": (
        lambda rng: {},
        "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
        lambda s, kw, topic: s.lower(),
    ),
}


def _instruction_problem(rng: random.Random):
    topic = rng.choice(sorted(TOPICS))
    iid = rng.choice(sorted(INSTRUCTIONS))
    make_kwargs, text, _ = INSTRUCTIONS[iid]
    kwargs = make_kwargs(rng)
    prompt = f"Write one sentence about {topic}. " + text.format(**kwargs)
    return prompt, {"prompt": prompt, "topic": topic, "instruction_id_list": [iid], "kwargs": [kwargs]}


def instruction_item(rng: random.Random, split: str = "train") -> dict:
    return _pick(rng, _instruction_problem, split)


def instruction_reply(item: dict, follow: bool = True) -> str:
    """A reply that follows the instruction, or (``follow=False``) the plain sentence that ignores it."""
    sentence = TOPICS[item["topic"]]
    if not follow:
        return (
            sentence
            if item["instruction_id_list"][0] != "change_case:english_lowercase"
            else sentence.upper()
        )
    reply = INSTRUCTIONS[item["instruction_id_list"][0]][2]
    return reply(sentence, item["kwargs"][0], item["topic"])


def _instructions(rng: random.Random) -> tuple[str, str, str]:
    item = instruction_item(rng)
    return item["prompt"], instruction_reply(item), instruction_reply(item, follow=False)


# ------------------------------------------------------------------------------------------------ facts
def mmlu_user_text(row: dict) -> str:
    """The user turn the MMLU eval sends with ``n_shot=0`` at its default prompt style (open-instruct's text)."""
    from tulu_kit.evals import mmlu

    return mmlu.build_prompt(row, [], 0)


def _fact_problem(rng: random.Random):
    subject = rng.choice(sorted(FACTS))
    pattern, table, _ = FACTS[subject]
    key = rng.choice(sorted(table))
    right = table[key]
    choices = rng.sample(sorted(v for v in set(table.values()) if v != right), 3) + [right]
    rng.shuffle(choices)
    row = {
        "subject": subject,
        "question": pattern.format(key),
        "choices": choices,
        "answer": LETTERS[choices.index(right)],
    }
    return f"{subject}|{row['question']}|{choices}", row


def fact_item(rng: random.Random, split: str = "train") -> dict:
    return _pick(rng, _fact_problem, split)


def fact_reply(row: dict, letter: str | None = None) -> str:
    """What the eval's "The answer is:" prefix expects next: the letter (a wrong one for a rejected reply)."""
    return f"The answer is: {letter or row['answer']}"


def _facts(rng: random.Random) -> tuple[str, str, str]:
    row = fact_item(rng)
    wrong = rng.choice([L for L in LETTERS if L != row["answer"]])
    return mmlu_user_text(row), fact_reply(row), fact_reply(row, wrong)


TASKS = {"arithmetic": _arithmetic, "instructions": _instructions, "facts": _facts}
# multiple choice takes the most examples to learn
WEIGHTS = {"arithmetic": 1.0, "facts": 1.5, "instructions": 1.0}


def _task(rng: random.Random) -> tuple[str, str, str, str]:
    names = sorted(TASKS)
    name = rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
    return (name, *TASKS[name](rng))


# ------------------------------------------------------------------------------------------------ datasets
def synthetic_sft(n: int, seed: int = 42, multi_turn: float = 0.1, system: float = 0.1) -> list[dict]:
    """``n`` conversations ``{"messages", "task"}`` from the train split; a ``multi_turn`` share have 2-3 turns,
    ``system`` a system prompt (so label masking of every assistant turn is exercised)."""
    rng = random.Random(f"sft-{seed}")
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < system:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        turns = rng.choice([2, 3]) if rng.random() < multi_turn else 1
        tasks = []
        for _ in range(turns):
            name, question, answer, _wrong = _task(rng)
            tasks.append(name)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages, "task": "+".join(tasks)})
    return rows


def synthetic_preference(n: int, seed: int = 42, off_format: float = 0.2) -> list[dict]:
    """``n`` pairs ``{"chosen", "rejected", "task"}`` from the train split: right vs wrong (or, an ``off_format``
    share, a refusal)."""
    rng = random.Random(f"preference-{seed}")
    rows = []
    for _ in range(n):
        name, question, answer, wrong = _task(rng)
        if rng.random() < off_format:
            wrong = rng.choice(OFF_FORMAT)
        prompt = [{"role": "user", "content": question}]
        rows.append(
            {
                "chosen": prompt + [{"role": "assistant", "content": answer}],
                "rejected": prompt + [{"role": "assistant", "content": wrong}],
                "task": name,
            }
        )
    return rows


def synthetic_arithmetic(n: int, seed: int = 42, max_answer: int | None = None) -> list[dict]:
    """``n`` RLVR rows ``{"messages", "ground_truth", "dataset": "gsm8k"}`` from the arithmetic train split, asked
    as the SFT data and the GSM8K eval ask them; the RL stages' toy task (notebooks 08 and 09).
    ``max_answer``: keep only problems whose answer is at most this (None: all)."""
    if n < 0 or (max_answer is not None and max_answer < 0):
        raise ValueError(f"n and max_answer must be >= 0, got {n}, {max_answer}")
    rng = random.Random(f"arithmetic-{seed}")
    rows = []
    while len(rows) < n:
        p = arithmetic_item(rng)
        if max_answer is not None and p["answer"] > max_answer:
            continue
        rows.append(
            {
                "messages": [{"role": "user", "content": gsm8k_user_text(p["question"])}],
                "ground_truth": str(p["answer"]),
                "dataset": "gsm8k",
            }
        )
    return rows


def synthetic_rlvr(n: int, seed: int = 42) -> list[dict]:
    """``n`` RLVR rows from the train split, arithmetic (``dataset: gsm8k``) and instructions (``dataset: ifeval``,
    ground truth the instruction ids and kwargs), each with its ``reference`` reply: the prompts of the on-policy
    preference data (:mod:`tulu_kit.data.onpolicy`)."""
    rng = random.Random(f"rlvr-{seed}")
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            p = arithmetic_item(rng)
            user, truth, dataset = gsm8k_user_text(p["question"]), str(p["answer"]), "gsm8k"
            reference = arithmetic_reply(p)
        else:
            item = instruction_item(rng)
            truth = {"instruction_id_list": item["instruction_id_list"], "kwargs": item["kwargs"]}
            user, dataset, reference = item["prompt"], "ifeval", instruction_reply(item)
        rows.append({"messages": [{"role": "user", "content": user}], "ground_truth": truth, "dataset": dataset,
                     "reference": reference})  # fmt: skip
    return rows


def all_arithmetic_problems(max_operand: int = MAX_OPERAND) -> list[dict]:
    """Every sum of the arithmetic task (a + b, and a - b with a >= b, for a, b <= max_operand), as the pretraining
    text states them."""
    out = []
    for a in range(max_operand + 1):
        for b in range(max_operand + 1):
            out.append({"a": a, "b": b, "op": "+", "answer": a + b})
            if a >= b:
                out.append({"a": a, "b": b, "op": "-", "answer": a - b})
    return out


def pretraining_corpus(seed: int = 42, repeats: int = 2) -> str:
    """Plain text for the base model's pretraining: every fact and topic sentence as prose and every sum written
    out ("7 plus 5 is 12."), ``repeats`` times in a seeded order, then the shipped tokenizer corpus. No chat
    format and no questions: the base model learns the world (held-out sums and facts included, as a pretrained
    model has read about the world), SFT then teaches it to answer."""
    from tulu_kit.models import CORPUS

    rng = random.Random(f"pretrain-{seed}")
    lines = []
    for _pattern, table, sentence in FACTS.values():
        lines += [sentence.format(k, v) for k, v in table.items()]
    lines += list(TOPICS.values())
    lines += [arithmetic_sentence(p) for p in all_arithmetic_problems()]
    lines *= repeats
    rng.shuffle(lines)
    paragraphs = [" ".join(lines[i : i + 6]) for i in range(0, len(lines), 6)]
    return "\n".join(paragraphs) + "\n" + CORPUS.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ benchmark files
def toy_benchmarks(n: int = 100, seed: int = 0) -> dict[str, list[dict]]:
    """``n`` distinct held-out questions per task, as rows of the benchmark files (see :func:`write_toy_benchmarks`).
    The held-out split is the same for every training seed; ``seed`` only picks which questions."""
    rng = random.Random(f"toy-benchmarks-{seed}")
    out: dict[str, list[dict]] = {"gsm8k": [], "ifeval": [], "mmlu": []}
    seen: set[str] = set()
    makers = {
        "gsm8k": lambda: arithmetic_item(rng, "test"),
        "ifeval": lambda: instruction_item(rng, "test"),
        "mmlu": lambda: fact_item(rng, "test"),
    }
    for name, make in makers.items():
        for _ in range(50 * n):
            if len(out[name]) == n:
                break
            item = make()
            key = item.get("prompt") or f"{item.get('subject')}|{item['question']}|{item.get('choices')}"
            if key not in seen:
                seen.add(key)
                out[name].append(item)
    return out


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in rows:
        writer.writerow([r["question"], *r["choices"], r["answer"]])
    return buf.getvalue()


def write_toy_benchmarks(out_dir: str | Path, n: int = 100, seed: int = 0) -> Path:
    """Write the held-out split as a benchmark data root: ``gsm8k/test.jsonl`` ({"question", "answer": "...#### N"}),
    ``ifeval/input_data.jsonl`` (key, prompt, instruction_id_list, kwargs) and ``mmlu/{dev,test}/<subject>_*.csv``
    (one subject per fact table; dev holds train-split questions). Give it to an eval stage as ``data_dir``."""
    root = Path(out_dir)
    bench = toy_benchmarks(n, seed)
    lines = [
        json.dumps({"question": p["question"], "answer": f"{arithmetic_reply(p)}\n#### {p['answer']}"})
        for p in bench["gsm8k"]
    ]
    atomic_write_text(root / "gsm8k" / "test.jsonl", "\n".join(lines) + "\n")
    lines = [
        json.dumps(
            {"key": 1000 + i, "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
             "kwargs": r["kwargs"]}
        )
        for i, r in enumerate(bench["ifeval"])
    ]  # fmt: skip
    atomic_write_text(root / "ifeval" / "input_data.jsonl", "\n".join(lines) + "\n")
    rng = random.Random(f"toy-dev-{seed}")
    for subject in FACTS:
        test = [r for r in bench["mmlu"] if r["subject"] == subject]
        dev = []
        while len(dev) < 5:
            row = fact_item(rng)
            if row["subject"] == subject:
                dev.append(row)
        atomic_write_text(root / "mmlu" / "test" / f"{subject}_test.csv", _csv(test))
        atomic_write_text(root / "mmlu" / "dev" / f"{subject}_dev.csv", _csv(dev))
    return root
