"""Assistant masks, checked: which tokens of a chat are trained, and proof that they are the replies (notebook 01).

Masks come from the template's ``{% generation %}`` marks (``return_assistant_tokens_mask``), or, for a template
without them, from open-instruct's Tulu 2 prefix method: the assistant span of turn i runs from the end of
``render(messages[:i], add_generation_prompt=True)`` to the end of ``render(messages[:i+1])``.

Checked, never trusted: a template is probed once (:func:`template_profile`) and every SFT row is checked
(:func:`check_masks`): each assistant reply must lie in a trained span of its own, holding the reply and the
template's end-of-turn marker and nothing else; otherwise a :class:`ChatTemplateError` names the template, the
source and the row. Conventions: a template that refuses a system turn (Gemma) gets it merged into the first user
turn ("{system}\n\n{user}", Gemma 3's own layout); a template that reads only text content parts (SmolVLM,
Idefics3, LLaVA-NeXT) gets each message as one text part; a template whose generation prompt opens a think block
(``tulu_thinker``, DeepSeek-R1-distill, Nemotron 3) trains only replies that carry their reasoning
(``<think>...</think>``), so training and eval prompt the same way. :func:`apply_template_conventions` gives eval
prompts the same conversions. Used by ``tokenize`` (every training stage) and the data stage's token report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tulu_kit.data.templates import (
    ChatTemplateError,
    describe_template,
    encode_chat,
    has_generation_marks,
    template_hash,
)


def _masks_by_prefix(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Tulu 2's prefix method, for templates without ``{% generation %}`` marks."""
    ids = encode_chat(tokenizer, messages)
    mask = [0] * len(ids)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(encode_chat(tokenizer, messages[:i], add_generation_prompt=True))
        end = min(len(encode_chat(tokenizer, messages[: i + 1])), len(ids))
        # a template may put a separator after the turn's eos (ChatML's "\n"): the reply ends at its eos
        eos_at = [t for t in range(start, end) if ids[t] == tokenizer.eos_token_id]
        end = eos_at[-1] + 1 if eos_at else end
        for t in range(start, end):
            mask[t] = 1
    return ids, mask


def _raw_masks(tokenizer, conversations: Sequence[list[dict]]) -> list[tuple[list[int], list[int]]]:
    if not has_generation_marks(tokenizer):
        return [_masks_by_prefix(tokenizer, conv) for conv in conversations]
    out = tokenizer.apply_chat_template(
        list(conversations), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return [(list(ids), list(mask)) for ids, mask in zip(out["input_ids"], out["assistant_masks"])]


# ---------------------------------------------------------------------------------------------- template checks
# A template is probed once per tokenizer with a known conversation: which variant of the chat format it takes
# (a system turn of its own or merged into the first user turn; plain strings or text content parts) and what it
# trains around each reply (its end-of-turn marker, an empty think block, a role header inside the span). Every
# tokenized row is then checked against that: one trained span per reply, holding the reply and nothing else.
_PROBE = (
    ("system", "Sysprobe words"),
    ("user", "Userone probe"),
    ("assistant", "Replyone probe"),
    ("user", "Usertwo probe"),
    ("assistant", "Replytwo probe"),
)
_SPACE = re.compile(r"\s+")
_THINK = "</think>"


def _compact(text: str) -> str:
    return _SPACE.sub("", text)


@dataclass(frozen=True)
class TemplateProfile:
    """How the kit feeds a chat template and what it expects each trained span to hold."""

    name: str  # how errors name the template
    merge_system: bool  # the template refuses a system turn: it is merged into the first user turn
    # the template reads only [{"type": "text", "text": ...}] content (vision-language templates)
    content_parts: bool
    decorations: tuple[tuple[str, str], tuple[str, str]]  # (before, after) the reply: (non-final, final turn)
    reply_prefix: str  # what the generation prompt already holds that every reply must open with ("<think>")


def prepare_messages(messages: list[dict], profile: TemplateProfile) -> list[dict]:
    """The conversation in the form the template takes (system turn merged, content parts), same text."""
    messages = [dict(m) for m in messages]
    if profile.merge_system and messages and messages[0]["role"] == "system":
        system, messages = messages[0], messages[1:]
        # the convention of Gemma 3's template: the system text opens the first user turn
        messages[0]["content"] = system["content"] + "\n\n" + messages[0]["content"]
    if profile.content_parts:
        for m in messages:
            m["content"] = [{"type": "text", "text": m["content"]}]
    return messages


def apply_template_conventions(tokenizer, messages: list[dict]) -> list[dict]:
    """The messages as the tokenizer's template takes them (what training fed it); for eval prompts."""
    return prepare_messages(messages, template_profile(tokenizer))


def _spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    prev = 0
    for t, m in zip(ids, mask):
        if m:
            if not prev:
                spans.append([])
            spans[-1].append(t)
        prev = m
    return spans


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _probe(tokenizer, merge_system: bool, content_parts: bool) -> TemplateProfile | str:
    """The profile of one variant, or why it does not train the probe's replies exactly."""
    name = describe_template(tokenizer)
    trial = TemplateProfile(name, merge_system, content_parts, (("", ""), ("", "")), "")
    probe = [{"role": r, "content": c} for r, c in _PROBE]
    messages = prepare_messages(probe, trial)
    try:
        ids, mask = _raw_masks(tokenizer, [messages])[0]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # a Jinja error raised by the template itself (refused role, missing field)
        return f"{type(e).__name__}: {e}"
    texts = [_compact(_decode(tokenizer, span)) for span in _spans(ids, mask)]
    replies = [_compact(c) for r, c in _PROBE if r == "assistant"]
    if len(texts) != len(replies):
        return f"it trains {len(texts)} spans for {len(replies)} replies"
    decorations = []
    for text, reply in zip(texts, replies):
        if text.count(reply) != 1 or any(_compact(c) in text for r, c in _PROBE if r != "assistant"):
            return f"a trained span holds {text!r}, not the reply {reply!r} alone"
        before, after = text.split(reply)
        decorations.append((before, after))
    reply_prefix = ""
    if not full.startswith(prompt):  # the generation prompt opens something every reply must start with
        common = 0
        while common < min(len(prompt), len(full)) and prompt[common] == full[common]:
            common += 1
        # either the rest of the prompt itself ("<think>") or a whole reasoning block (Nemotron 3 prompts with
        # "<think>\n" but renders a reply without reasoning as "<think></think>")
        extra = prompt[common:]
        openings = ["<think>\nProbe reasoning\n</think>\n\n"] + ([] if "<think>" in extra else [extra])
        for opening in openings:  # an opened think block must survive whole, not just its first tag
            if _opening_works(tokenizer, trial, opening):
                reply_prefix = opening.split("\n")[0] if opening.startswith("<think>") else opening
                break
        else:
            return "its generation prompt is not a prefix of the conversation it trains on"
    return TemplateProfile(name, merge_system, content_parts, (decorations[0], decorations[1]), reply_prefix)


def _opening_works(tokenizer, trial: TemplateProfile, opening: str) -> bool:
    """Whether the generation prompt is a prefix of the training text when the final reply opens with this."""
    probe = [{"role": r, "content": c} for r, c in _PROBE]
    probe[-1]["content"] = opening + probe[-1]["content"]
    messages = prepare_messages(probe, trial)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages, tokenize=False).startswith(prompt)


_PROFILES: dict[tuple, TemplateProfile] = {}


def template_profile(tokenizer) -> TemplateProfile:
    """Probe the tokenizer's chat template once; a template that trains no variant exactly is refused.

    Variants tried in order: as is; with the system turn merged into the first user turn (templates such as
    Gemma's that refuse a system role); with text content parts (vision-language templates); both.
    """
    key = (
        template_hash(tokenizer),
        getattr(tokenizer, "name_or_path", ""),
        len(tokenizer),
        tokenizer.eos_token,
        tokenizer.bos_token,
    )
    if key not in _PROFILES:
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError("the tokenizer has no chat template (set one with set_chat_template)")
        problems = []
        for merge_system, content_parts in ((False, False), (True, False), (False, True), (True, True)):
            found = _probe(tokenizer, merge_system, content_parts)
            if isinstance(found, TemplateProfile):
                _PROFILES[key] = found
                break
            variant = ", ".join(
                [
                    "system merged" if merge_system else "system turn",
                    "content parts" if content_parts else "text",
                ]
            )
            problems.append(f"[{variant}] {found}")
        else:
            raise ChatTemplateError(
                f"chat template {describe_template(tokenizer)} cannot train text chats exactly: "
                + "; ".join(problems)
            )
    return _PROFILES[key]


def check_masks(
    tokenizer,
    profile: TemplateProfile,
    conversations: Sequence[list[dict]],
    encoded: Sequence[tuple[list[int], list[int]]],
    *,
    source: str = "<sft>",
    first_row: int = 0,
) -> None:
    """Stop unless each assistant reply lies in a trained span of its own and nothing else is trained.

    Compares whitespace-free text: a span must read (before) + reply + (after), the template's decoration of
    that turn learned by :func:`template_profile` (end-of-turn marker, an empty think block, ...).
    """
    spans = [_spans(ids, mask) for ids, mask in encoded]
    flat = [s for row in spans for s in row]
    texts = iter(
        _compact(t)
        for t in tokenizer.batch_decode(flat, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    )
    prefix = _compact(profile.reply_prefix)
    for j, (conv, row_spans) in enumerate(zip(conversations, spans)):
        replies = [_compact(m["content"]) for m in conv if m["role"] == "assistant"]
        where = f"{source}: row {first_row + j}: chat template {profile.name}"
        if len(row_spans) != len(replies):
            raise ChatTemplateError(
                f"{where} trains {len(row_spans)} spans for {len(replies)} assistant replies"
            )
        for k, reply in enumerate(replies):
            text = next(texts)
            before, after = profile.decorations[k == len(replies) - 1]
            allowed = {before + reply + after}
            if _THINK in reply:  # a reasoning reply replaces the template's empty think block
                allowed.add(reply + after)
            if text not in allowed:
                raise ChatTemplateError(
                    f"{where}: reply {k + 1} is trained as {text[:80]!r}, expected {min(allowed)[:80]!r} "
                    "(whitespace ignored); the template drops or moves part of the reply"
                )
            if prefix and not reply.startswith(prefix):
                raise ChatTemplateError(
                    f"{where}: reply {k + 1} does not open with {profile.reply_prefix!r}, which the template's "
                    "generation prompt writes at eval time; training and eval would see different text"
                )


def assistant_token_masks(
    tokenizer, conversations: Sequence[list[dict]]
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, mask)`` per conversation; mask is 1 on each assistant reply and its end-of-turn marker.

    Conversations are fed in the form the template takes (:func:`prepare_messages`).
    """
    profile = template_profile(tokenizer)
    return _raw_masks(tokenizer, [prepare_messages(c, profile) for c in conversations])
