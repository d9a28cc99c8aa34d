"""Quickstart data made offline from a seed: SFT conversations and preference pairs on small learnable tasks.

The tasks are ones a 2-layer, hidden-64 model can pick up in a minute on CPU: addition and subtraction answered
"The answer is N.", copying and reversing a few words, and capital-city facts from a small table. Some
conversations are multi-turn and some carry a system prompt, so label masking of every assistant turn is exercised.
Preference pairs share the prompt; the chosen reply is correct and in the trained format, the rejected one is
wrong (a wrong number, city or word order) or off-format (a refusal or a rambling guess), so DPO has a signal to
lift preference accuracy above chance. Used by the ``data`` stage of ``recipes/quickstart.yaml`` (notebook 01).
"""

from __future__ import annotations

import random

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Peru": "Lima",
    "Egypt": "Cairo",
    "Norway": "Oslo",
    "India": "New Delhi",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "China": "Beijing",
}
WORDS = "red green blue apple river cat dog sun rain book tree road water fire stone bird fish moon star cake".split()
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


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    if rng.random() < 0.5:
        q, ans = f"What is {a} plus {b}?", a + b
    else:
        a, b = max(a, b), min(a, b)
        q, ans = f"What is {a} minus {b}?", a - b
    wrong = ans + rng.choice([-3, -2, -1, 1, 2, 3, 10])
    return q, f"The answer is {ans}.", f"The answer is {wrong}."


def _capital(rng: random.Random) -> tuple[str, str, str]:
    country = rng.choice(sorted(CAPITALS))
    wrong = rng.choice([c for k, c in sorted(CAPITALS.items()) if k != country])
    q = f"What is the capital of {country}?"
    return q, f"The capital of {country} is {CAPITALS[country]}.", f"The capital of {country} is {wrong}."


def _words(rng: random.Random) -> list[str]:
    return rng.sample(WORDS, rng.randint(2, 4))


def _copy(rng: random.Random) -> tuple[str, str, str]:
    words = _words(rng)
    shuffled = words[:]
    while shuffled == words:
        rng.shuffle(shuffled)
    return f'Repeat the words "{" ".join(words)}".', " ".join(words), " ".join(shuffled)


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    words = _words(rng)
    return f'Reverse the words in "{" ".join(words)}".', " ".join(reversed(words)), " ".join(words)


TASKS = {"arithmetic": _arithmetic, "capital": _capital, "copy": _copy, "reverse": _reverse}


def _task(rng: random.Random) -> tuple[str, str, str, str]:
    name = rng.choice(sorted(TASKS))
    return (name, *TASKS[name](rng))


def synthetic_sft(n: int, seed: int = 42, multi_turn: float = 0.25, system: float = 0.2) -> list[dict]:
    """``n`` conversations ``{"messages", "task"}``; a ``multi_turn`` share have 2-3 turns, ``system`` a system prompt."""
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


def synthetic_preference(n: int, seed: int = 42, off_format: float = 0.5) -> list[dict]:
    """``n`` pairs ``{"chosen", "rejected", "task"}``: correct vs wrong (or, an ``off_format`` share, off-format)."""
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


def synthetic_arithmetic(n: int, seed: int = 42, max_answer: int = 9) -> list[dict]:
    """``n`` RLVR rows ``{"messages", "ground_truth", "dataset": "gsm8k"}``: "What is a plus/minus b?" with an
    answer in ``[0, max_answer]``, asked as the SFT data asks it and scored by the GSM8K scorer (last number).

    The toy task of the RL stages (PPO, GRPO; notebooks 08 and 09): small answers make a correct one likely
    enough from the start for a reward signal, and the SFT warm-up's "The answer is N." gives the format.
    """
    if n < 0 or max_answer < 0:
        raise ValueError(f"n and max_answer must be >= 0, got {n}, {max_answer}")
    rng = random.Random(f"arithmetic-{seed}")
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            ans = rng.randint(0, max_answer)
            a = rng.randint(0, ans)
            question = f"What is {a} plus {ans - a}?"
        else:
            a = rng.randint(0, max_answer)
            b = rng.randint(0, a)
            question, ans = f"What is {a} minus {b}?", a - b
        rows.append(
            {
                "messages": [{"role": "user", "content": question}],
                "ground_truth": str(ans),
                "dataset": "gsm8k",
            }
        )
    return rows
