"""Converters from the published layouts of the Tulu training sets to the unified chat format (notebook 01).

SFT rows become ``{"messages": [{role, content}, ...]}``; preference rows ``{"chosen": [...], "rejected": [...]}``.
Each entry of :data:`FORMATS` names its real source (Hub id, official file URL) and the fields it reads, following
open-instruct's ``scripts/data/sft/*`` and ``reformat_datasets.py`` (Tulu 2) conversions. Contents converted from
raw fields are stripped of surrounding whitespace, as Tulu 2 did. A bad row raises :class:`BadRowError` (source,
row, field) or, with ``on_bad_row="drop"``, is dropped and counted.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tulu_kit.data.validate import BadRowError, validate_messages, validate_preference


@dataclass(frozen=True)
class Format:
    name: str
    kind: Literal["sft", "preference"]
    convert: Callable[
        ..., Any
    ]  # (row, source, index) -> example; or (rows, source) -> examples if table-level
    hub_id: str | None = None  # where the real data lives (datasets.load_dataset id)
    url: str | None = None  # official file, when there is one
    table: bool = False  # True: the converter sees the whole table (oasst1 trees)


def _field(row: Any, key: str, source: str, index: int, *, optional: bool = False) -> str:
    if not isinstance(row, Mapping):
        raise BadRowError(source, index, "<row>", f"expected an object, got {type(row).__name__}")
    if key not in row or row[key] is None:
        if optional:
            return ""
        raise BadRowError(source, index, key, "missing")
    value = row[key]
    if not isinstance(value, str):
        raise BadRowError(source, index, key, f"expected a string, got {type(value).__name__}")
    return value.strip()


def _pair(user: str, assistant: str, system: str = "") -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def convert_alpaca(row: Mapping, source: str = "alpaca", index: int = 0) -> dict:
    """Stanford Alpaca / GPT4-Alpaca / Code-Alpaca: ``instruction``, optional ``input``, ``output``."""
    instruction = _field(row, "instruction", source, index)
    extra = _field(row, "input", source, index, optional=True)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return {"messages": _pair(user, _field(row, "output", source, index))}


def convert_dolly(row: Mapping, source: str = "dolly", index: int = 0) -> dict:
    """databricks-dolly-15k: ``instruction``, optional ``context``, ``response``."""
    instruction = _field(row, "instruction", source, index)
    context = _field(row, "context", source, index, optional=True)
    user = f"{instruction}\n\n{context}" if context else instruction
    return {"messages": _pair(user, _field(row, "response", source, index))}


def convert_flan(row: Mapping, source: str = "flan_v2", index: int = 0) -> dict:
    """FLAN v2 / CoT exports: ``inputs`` and ``targets`` (plus task metadata, ignored)."""
    return {"messages": _pair(_field(row, "inputs", source, index), _field(row, "targets", source, index))}


def convert_open_orca(row: Mapping, source: str = "open_orca", index: int = 0) -> dict:
    """Open-Orca: ``system_prompt`` (may be empty), ``question``, ``response``."""
    system = _field(row, "system_prompt", source, index, optional=True)
    return {
        "messages": _pair(
            _field(row, "question", source, index), _field(row, "response", source, index), system
        )
    }


def convert_prompt_completion(row: Mapping, source: str = "prompt_completion", index: int = 0) -> dict:
    """Plain pairs: ``prompt`` and ``completion`` strings."""
    return {"messages": _pair(_field(row, "prompt", source, index), _field(row, "completion", source, index))}


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "assistant": "assistant", "bard": "assistant", "bing": "assistant", "system": "system"}  # fmt: skip


def convert_sharegpt(row: Mapping, source: str = "sharegpt", index: int = 0) -> dict:
    """ShareGPT / Vicuna layout: ``conversations: [{"from": human|gpt|system, "value"}]``.

    As in FastChat's cleaning, leading assistant turns and a trailing user turn are dropped (nothing to train).
    """
    if not isinstance(row, Mapping) or "conversations" not in row:
        raise BadRowError(source, index, "conversations", "missing")
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise BadRowError(source, index, "conversations", f"expected a list, got {type(turns).__name__}")
    messages = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, Mapping) or "from" not in turn:
            raise BadRowError(source, index, f"{where}.from", "missing")
        if turn["from"] not in SHAREGPT_ROLES:
            raise BadRowError(source, index, f"{where}.from", f"unknown speaker {turn['from']!r}")
        value = _field(turn, "value", source, index) if "value" in turn else None
        if value is None:
            raise BadRowError(source, index, f"{where}.value", "missing")
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": value})
    return {"messages": _trim_turns(messages)}


def _trim_turns(messages: list[dict]) -> list[dict]:
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    while rest and rest[0]["role"] == "assistant":
        rest = rest[1:]
    while rest and rest[-1]["role"] == "user":
        rest = rest[:-1]
    return system + rest


def convert_lima(row: Mapping, source: str = "lima", index: int = 0) -> dict:
    """LIMA: ``conversations`` is a list of strings, alternating user / assistant from a user turn."""
    turns = row.get("conversations") if isinstance(row, Mapping) else None
    if not isinstance(turns, list):
        raise BadRowError(source, index, "conversations", "missing or not a list of strings")
    messages = []
    for i, text in enumerate(turns):
        if not isinstance(text, str):
            raise BadRowError(
                source, index, f"conversations[{i}]", f"expected a string, got {type(text).__name__}"
            )
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text.strip()})
    return {"messages": _trim_turns(messages)}


def convert_wizardlm(row: Mapping, source: str = "wizardlm", index: int = 0) -> dict:
    """WizardLM evol-instruct: V2 (196k) is ShareGPT layout; the 70k release has ``instruction``/``output``."""
    if isinstance(row, Mapping) and "conversations" in row:
        return convert_sharegpt(row, source, index)
    return {
        "messages": _pair(_field(row, "instruction", source, index), _field(row, "output", source, index))
    }


def convert_messages(row: Mapping, source: str = "messages", index: int = 0) -> dict:
    """Already in format (the Tulu v2 / v3 SFT mixtures): ``messages`` as is."""
    if not isinstance(row, Mapping) or "messages" not in row:
        raise BadRowError(source, index, "messages", "missing")
    return {"messages": row["messages"]}


def convert_oasst1(rows: Sequence[Mapping], source: str = "oasst1") -> list[tuple[int, dict]]:
    """OpenAssistant oasst1 message table -> one conversation per tree, along the top-ranked path.

    From each root prompt, follow the child with the best ``rank`` (0 is best; unranked last) down to a leaf, as
    Tulu 2 did with ``top_k=1``. Deleted messages and those that failed review are skipped. Returns
    ``(row index of the root, example)`` pairs, and ``(row index, BadRowError)`` for malformed messages.
    """
    children: dict[str, list[int]] = defaultdict(list)
    roots, out, seen = [], [], {}
    for i, row in enumerate(rows):
        try:
            for key in ("message_id", "text", "role"):
                _field(row, key, source, i)
            if row["role"] not in ("prompter", "assistant"):
                raise BadRowError(
                    source, i, "role", f"unknown role {row['role']!r} (expected prompter or assistant)"
                )
            if row["message_id"] in seen:  # a repeated id would make the tree a cycle
                raise BadRowError(
                    source,
                    i,
                    "message_id",
                    f"{row['message_id']!r} repeats the id of row {seen[row['message_id']]}",
                )
            seen[row["message_id"]] = i
        except BadRowError as e:
            out.append((i, e))
            continue
        if row.get("deleted") or row.get("review_result") is False:
            continue
        if row.get("parent_id") is None:
            roots.append(i)
        else:
            children[row["parent_id"]].append(i)
    for root in roots:
        path, node = [root], root
        while children.get(rows[node]["message_id"]):
            ranked = children[rows[node]["message_id"]]
            node = min(ranked, key=lambda j: (rows[j].get("rank") is None, rows[j].get("rank") or 0, j))
            if node in path:  # cannot happen with unique ids; never loop forever on a broken table
                break
            path.append(node)
        messages = [
            {
                "role": "user" if rows[j]["role"] == "prompter" else "assistant",
                "content": rows[j]["text"].strip(),
            }
            for j in path
        ]
        out.append((root, {"messages": _trim_turns(messages)}))
    return out


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(
    text: str, source: str = "hh_rlhf", index: int = 0, field: str = "chosen"
) -> list[dict]:
    """An HH-RLHF transcript ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` as messages."""
    if not isinstance(text, str):
        raise BadRowError(source, index, field, f"expected a string, got {type(text).__name__}")
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise BadRowError(source, index, field, "not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    return [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(parts[1::2], parts[2::2])
    ]


def convert_hh_rlhf(row: Mapping, source: str = "hh_rlhf", index: int = 0) -> dict:
    """Anthropic HH-RLHF: ``chosen`` / ``rejected`` transcripts that share all but the last Assistant turn."""
    for key in ("chosen", "rejected"):
        if not isinstance(row, Mapping) or key not in row:
            raise BadRowError(source, index, key, "missing")
    return {k: parse_hh_transcript(row[k], source, index, k) for k in ("chosen", "rejected")}


def convert_ultrafeedback(row: Mapping, source: str = "ultrafeedback", index: int = 0) -> dict:
    """UltraFeedback binarized (HuggingFaceH4): ``chosen`` / ``rejected`` are message lists (prompt + reply)."""
    for key in ("chosen", "rejected"):
        if not isinstance(row, Mapping) or key not in row:
            raise BadRowError(source, index, key, "missing")
    return {"chosen": row["chosen"], "rejected": row["rejected"]}


def convert_prompt_preference(row: Mapping, source: str = "prompt_preference", index: int = 0) -> dict:
    """Plain preference strings: ``prompt``, ``chosen``, ``rejected``."""
    prompt = _field(row, "prompt", source, index)
    return {k: _pair(prompt, _field(row, k, source, index)) for k in ("chosen", "rejected")}


_RAW = "https://raw.githubusercontent.com"
FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("alpaca", "sft", convert_alpaca, "tatsu-lab/alpaca", f"{_RAW}/tatsu-lab/stanford_alpaca/main/alpaca_data.json"),
        Format("gpt4_alpaca", "sft", convert_alpaca, "vicgalle/alpaca-gpt4",
               f"{_RAW}/Instruction-Tuning-with-GPT-4/GPT-4-LLM/main/data/alpaca_gpt4_data.json"),
        Format("code_alpaca", "sft", convert_alpaca, "sahil2801/CodeAlpaca-20k",
               f"{_RAW}/sahil280114/codealpaca/master/data/code_alpaca_20k.json"),
        Format("dolly", "sft", convert_dolly, "databricks/databricks-dolly-15k"),
        Format("oasst1", "sft", convert_oasst1, "OpenAssistant/oasst1", table=True),
        Format("sharegpt", "sft", convert_sharegpt, "anon8231489123/ShareGPT_Vicuna_unfiltered"),
        Format("flan_v2", "sft", convert_flan, "SirNeural/flan_v2"),
        Format("cot", "sft", convert_flan, "SirNeural/flan_v2"),
        Format("lima", "sft", convert_lima, "GAIR/lima"),
        Format("wizardlm", "sft", convert_wizardlm, "WizardLMTeam/WizardLM_evol_instruct_V2_196k"),
        Format("open_orca", "sft", convert_open_orca, "Open-Orca/OpenOrca"),
        Format("tulu_v2", "sft", convert_messages, "allenai/tulu-v2-sft-mixture"),
        Format("messages", "sft", convert_messages),
        Format("prompt_completion", "sft", convert_prompt_completion),
        Format("ultrafeedback", "preference", convert_ultrafeedback, "HuggingFaceH4/ultrafeedback_binarized"),
        Format("hh_rlhf", "preference", convert_hh_rlhf, "Anthropic/hh-rlhf"),
        Format("preference_messages", "preference", convert_ultrafeedback),
        Format("prompt_preference", "preference", convert_prompt_preference),
    ]
}  # fmt: skip


@dataclass
class Converted:
    """Converted examples with the input row each came from, and what was dropped (``(row, message)``)."""

    examples: list[dict]
    rows: list[int]
    dropped: list[tuple[int, str]]


def convert_rows(
    fmt: str,
    rows: Sequence[Any],
    *,
    source: str | None = None,
    on_bad_row: Literal["error", "drop"] = "error",
) -> Converted:
    """Convert and validate every row of a source; bad rows raise, or are dropped and counted."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format '{fmt}'; known: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    source = source or fmt
    if on_bad_row not in ("error", "drop"):
        raise ValueError(f"on_bad_row must be 'error' or 'drop', got {on_bad_row!r}")
    out = Converted([], [], [])
    if spec.table:
        pairs = spec.convert(rows, source)
    else:
        pairs = ((i, row) for i, row in enumerate(rows))
    for i, item in pairs:
        try:
            if isinstance(item, BadRowError):
                raise item
            example = item if spec.table else spec.convert(item, source, i)
            example = _validated(spec.kind, example, source, i)
        except BadRowError as e:
            if on_bad_row == "error":
                raise
            out.dropped.append((i, str(e)))
            continue
        out.examples.append(example)
        out.rows.append(i)
    return out


def _validated(kind: str, example: dict, source: str, index: int) -> dict:
    if kind == "sft":
        return {"messages": validate_messages(example["messages"], source=source, row=index)}
    return validate_preference(example, source=source, index=index)
