"""Validation of the unified chat format: one place that says what a good row is (notebook 01, every stage).

A conversation is ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``: an optional system message
first, then user and assistant turns alternating, starting with a user turn and ending with an assistant turn.
A preference row has ``chosen`` and ``rejected`` conversations that share everything but the last assistant turn.
A bad row raises :class:`BadRowError` naming the source, the row and the field, never a bare KeyError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLES = ("system", "user", "assistant")


class BadRowError(ValueError):
    """A row that breaks the chat format; the message names the source, the row and the field."""

    def __init__(self, source: str, row: int | str, field: str, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        super().__init__(f"{source}: row {row}: field '{field}': {problem}")


def validate_messages(
    messages: Any, *, source: str = "<data>", row: int | str = "?", field: str = "messages"
) -> list[dict]:
    """Check one conversation and return it as plain ``{"role", "content"}`` dicts (extra keys dropped)."""
    if not isinstance(messages, (list, tuple)):
        raise BadRowError(source, row, field, f"expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise BadRowError(source, row, field, "empty conversation")
    out = []
    for i, msg in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(msg, Mapping):
            raise BadRowError(source, row, where, f"expected a message object, got {type(msg).__name__}")
        for key in ("role", "content"):
            if key not in msg:
                raise BadRowError(source, row, f"{where}.{key}", "missing")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise BadRowError(
                source, row, f"{where}.role", f"unknown role {role!r} (expected one of {ROLES})"
            )
        if not isinstance(content, str):
            raise BadRowError(
                source, row, f"{where}.content", f"expected a string, got {type(content).__name__}"
            )
        if not content.strip():
            raise BadRowError(source, row, f"{where}.content", "empty content")
        out.append({"role": role, "content": content})
    _check_turn_order(out, source=source, row=row, field=field)
    return out


def _check_turn_order(messages: list[dict], *, source: str, row: int | str, field: str) -> None:
    roles = [m["role"] for m in messages]
    start = 1 if roles[0] == "system" else 0
    if start == len(roles):
        raise BadRowError(source, row, field, "only a system message, no user/assistant turns")
    for i in range(start, len(roles)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != expected:
            problem = (
                "system message only allowed first" if roles[i] == "system" else "turns do not alternate"
            )
            raise BadRowError(
                source, row, f"{field}[{i}].role", f"{problem}: expected {expected!r}, got {roles[i]!r}"
            )
    if roles[-1] != "assistant":
        raise BadRowError(
            source, row, f"{field}[{len(roles) - 1}].role", "conversation must end with an assistant turn"
        )


def validate_preference(row: Mapping, *, source: str = "<data>", index: int | str = "?") -> dict:
    """Check a ``{"chosen": [...], "rejected": [...]}`` row: both valid, same prompt, different last turns
    (identical responses give DPO no gradient: a bad row, as in the DPO stage)."""
    if not isinstance(row, Mapping):
        raise BadRowError(source, index, "<row>", f"expected an object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise BadRowError(source, index, key, "missing")
    chosen = validate_messages(row["chosen"], source=source, row=index, field="chosen")
    rejected = validate_messages(row["rejected"], source=source, row=index, field="rejected")
    if chosen[:-1] != rejected[:-1]:
        raise BadRowError(
            source, index, "rejected", "chosen and rejected do not share the same prompt messages"
        )
    if chosen[-1]["content"].strip() == rejected[-1]["content"].strip():  # as the DPO stage refuses it
        raise BadRowError(
            source, index, "rejected", "chosen and rejected responses are identical (no preference)"
        )
    return {"chosen": chosen, "rejected": rejected}


def validate_sft_row(row: Any, *, source: str = "<data>", index: int | str = "?") -> dict:
    """Check a ``{"messages": [...]}`` row and return ``{"messages": [...]}`` with plain messages."""
    if not isinstance(row, Mapping):
        raise BadRowError(source, index, "<row>", f"expected an object, got {type(row).__name__}")
    if "messages" not in row:
        raise BadRowError(source, index, "messages", "missing")
    return {"messages": validate_messages(row["messages"], source=source, row=index)}
