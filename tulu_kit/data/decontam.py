"""N-gram decontamination: which training examples overlap an eval set (notebook 01, the ``data`` stage).

A training example is contaminated by an eval set when they share at least one word n-gram (13-grams by default,
the GPT-3 paper's test, Brown et al. 2020, Appendix C; open-instruct's ``decontamination/`` searches the same
kind of overlap). Text is lower-cased and split into words (``\\w+``) first, so punctuation and spacing differences
do not hide an overlap. The report lists each contaminated example with its source, the eval set, the number of
shared n-grams and one of them; ``remove`` drops those examples from the mix.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tulu_kit.data.sources import read_file

_WORD = re.compile(r"\w+")
# fields that hold the prompt/question text in the eval files the kit reads (gsm8k, ifeval, alpaca_eval, mt_bench,
# humaneval, mbpp, math500, truthfulqa, xstest)
EVAL_TEXT_FIELDS = (
    "question",
    "prompt",
    "instruction",
    "problem",
    "text",
    "input",
    "turns",
    "Question",
    "Prompt",
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> Iterable[tuple[str, ...]]:
    w = words(text)
    return (tuple(w[i : i + n]) for i in range(len(w) - n + 1))


def _h(gram: tuple[str, ...]) -> bytes:
    return hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest()


def example_text(example: dict) -> str:
    """All message contents of an SFT or preference example, joined."""
    messages = list(example.get("messages", []))
    for key in ("chosen", "rejected"):
        messages += example.get(key, [])
    return "\n".join(m["content"] for m in messages)


def load_eval_texts(path: str | Path) -> list[str]:
    """Prompt texts of an eval file (JSON/JSONL/CSV); the fields read are :data:`EVAL_TEXT_FIELDS`."""
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = read_file(path)
    texts = []
    for row in rows:
        for key in EVAL_TEXT_FIELDS:
            value = row.get(key) if isinstance(row, dict) else None
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts += [v for v in value if isinstance(v, str)]
    if not texts:
        raise ValueError(f"{path}: no eval text found (looked for fields {', '.join(EVAL_TEXT_FIELDS)})")
    return texts


@dataclass
class Contaminated:
    index: int  # position in the training mix
    source: str
    eval_set: str
    n_shared: int
    example_ngram: str


@dataclass
class DecontamReport:
    n: int
    n_train: int
    eval_sets: dict[str, int]  # name -> number of eval texts
    contaminated: list[Contaminated] = field(default_factory=list)

    @property
    def indices(self) -> set[int]:
        return {c.index for c in self.contaminated}

    def summary(self) -> dict:
        per_set: dict[str, int] = {}
        for c in self.contaminated:
            per_set[c.eval_set] = per_set.get(c.eval_set, 0) + 1
        return {"ngram": self.n, "n_train": self.n_train, "eval_sets": self.eval_sets,
                "n_contaminated": len(self.indices), "contaminated_per_eval_set": per_set}  # fmt: skip


def ngram_overlap(train: Sequence[dict], eval_sets: dict[str, Sequence[str]], n: int = 13) -> DecontamReport:
    """Find training examples sharing a word ``n``-gram with any eval set."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    index = {name: {_h(g) for text in texts for g in ngrams(text, n)} for name, texts in eval_sets.items()}
    report = DecontamReport(n, len(train), {k: len(v) for k, v in eval_sets.items()})
    for i, example in enumerate(train):
        grams = list(ngrams(example_text(example), n))
        for name, hashes in index.items():
            shared = [g for g in grams if _h(g) in hashes]
            if shared:
                report.contaminated.append(
                    Contaminated(i, example.get("source", ""), name, len(shared), " ".join(shared[0]))
                )
    return report


def remove_contaminated(
    train: Sequence[dict], report: DecontamReport, offset: int = 0
) -> tuple[list[dict], list[dict]]:
    """(kept, removed) rows of ``train``, whose first row is row ``offset`` of the set ``report`` checked."""
    bad = report.indices
    kept = [ex for i, ex in enumerate(train, offset) if i not in bad]
    removed = [ex for i, ex in enumerate(train, offset) if i in bad]
    return kept, removed
