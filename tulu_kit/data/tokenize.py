"""SFT and preference tokenization with Tulu's label masking (notebook 01; used by the sft, dpo and reward stages).

SFT: each conversation is rendered by the tokenizer's own chat template (the Jinja that ``apply_chat_template``,
TRL and vLLM also use) and tokenized. ``labels`` equal ``input_ids`` on the tokens of every assistant turn (its
content plus the eos that ends it, i.e. the ``{% generation %}`` spans) and are -100 everywhere else, as in
open-instruct's ``sft_tulu_tokenize_and_truncate``. Sequences are cut from the right at ``max_length``; an example
left with no trainable token is dropped and counted (it would give a 0/0 = NaN loss).

Masks and their checks live in :mod:`tulu_kit.data.masks` (a template is probed once and every row is checked:
a template that would train the wrong tokens stops with a :class:`ChatTemplateError` naming it).

Preference: ``prompt_ids`` is the rendered shared prompt with the generation prompt, ``chosen_ids`` /
``rejected_ids`` the tokens that follow it in the rendered full conversations (TRL's ``DataCollatorForPreference``
layout), so prompt, chosen and rejected use one template.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tulu_kit.data.masks import (  # noqa: F401  (re-exported: the mask API of tokenization)
    ChatTemplateError,
    TemplateProfile,
    apply_template_conventions,
    assistant_token_masks,
    check_masks,
    prepare_messages,
    template_profile,
)
from tulu_kit.data.templates import encode_chat
from tulu_kit.data.validate import BadRowError, validate_messages, validate_preference

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_BATCH = 256


@dataclass
class TokenizeStats:
    """What tokenization kept, cut and dropped; ``lengths[k]`` and ``kept[k]`` describe output row k."""

    n_input: int = 0
    n_kept: int = 0
    n_truncated: int = 0  # rows cut at max_length (still kept if something trainable is left)
    n_dropped_no_labels: int = 0  # rows with no trainable token left: dropped, never a NaN loss
    n_dropped_prompt_too_long: int = 0  # preference rows whose prompt alone fills max_length
    n_tokens: int = 0
    n_trained_tokens: int = 0
    lengths: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # index in the input of each output row

    def summary(self) -> dict[str, Any]:
        """Counts and token statistics for ``report.json`` (without the per-row lists)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("lengths", "kept")}
        lengths = sorted(self.lengths)
        if lengths:
            out.update(
                mean_length=round(sum(lengths) / len(lengths), 2),
                max_length=lengths[-1],
                p50_length=lengths[len(lengths) // 2],
                p95_length=lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
                trained_fraction=round(self.n_trained_tokens / max(1, self.n_tokens), 4),
            )
        return out


def _conversation(item: Any, index: int, source: str) -> list[dict]:
    if isinstance(item, Mapping):
        if "messages" not in item:
            raise BadRowError(source, index, "messages", "missing")
        item = item["messages"]
    return validate_messages(item, source=source, row=index)


def _keep_last_span(mask: list[int]) -> list[int]:
    out = [0] * len(mask)
    i = len(mask) - 1
    while i >= 0 and not mask[i]:
        i -= 1
    while i >= 0 and mask[i]:
        out[i] = 1
        i -= 1
    return out


def tokenize_sft(
    conversations: Iterable[Mapping | list[dict]],
    tokenizer,
    max_length: int,
    *,
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant",
    source: str = "<sft>",
    check: bool = True,
) -> tuple[list[dict], TokenizeStats]:
    """Tokenize conversations (rows with ``messages`` or bare message lists) into ``input_ids``/``labels`` rows.

    Returns the kept rows and a :class:`TokenizeStats`. Every assistant turn is trained (``train_on="all_assistant"``,
    Tulu's default) or only the last one. With ``check`` (the default) every row's mask is checked before it is
    cut (:func:`check_masks`): a template that would train the wrong tokens stops with a :class:`ChatTemplateError`.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    items = list(conversations)
    stats = TokenizeStats(n_input=len(items))
    rows: list[dict] = []
    for start in range(0, len(items), _BATCH):
        convs = [
            _conversation(item, start + j, source) for j, item in enumerate(items[start : start + _BATCH])
        ]
        encoded = assistant_token_masks(tokenizer, convs)
        if check:
            check_masks(
                tokenizer, template_profile(tokenizer), convs, encoded, source=source, first_row=start
            )
        for j, (ids, mask) in enumerate(encoded):
            if train_on == "last_assistant":
                mask = _keep_last_span(mask)
            if len(ids) > max_length:
                stats.n_truncated += 1
                ids, mask = ids[:max_length], mask[:max_length]
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
            n_trained = sum(1 for m in mask if m)
            if n_trained == 0:
                stats.n_dropped_no_labels += 1
                continue
            rows.append({"input_ids": ids, "labels": labels})
            stats.kept.append(start + j)
            stats.lengths.append(len(ids))
            stats.n_tokens += len(ids)
            stats.n_trained_tokens += n_trained
    stats.n_kept = len(rows)
    if stats.n_dropped_no_labels:
        logger.info("%s: dropped %d rows with no trainable token left", source, stats.n_dropped_no_labels)
    return rows, stats


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _through_eos(ids: list[int], eos_id: int | None) -> list[int]:
    """A completion ends at its eos; a separator the template puts after it (ChatML's "\\n") is not scored."""
    for k in range(len(ids) - 1, -1, -1):
        if ids[k] == eos_id:
            return ids[: k + 1]
    return ids


def tokenize_preference(
    pairs: Iterable[Mapping], tokenizer, max_length: int, *, source: str = "<preference>"
) -> tuple[list[dict], TokenizeStats]:
    """Tokenize ``{"chosen", "rejected"}`` conversation pairs into ``prompt_ids``/``chosen_ids``/``rejected_ids``.

    The prompt is ``chosen[:-1]`` rendered with the generation prompt; the completions are the tokens after it
    (last assistant content + eos). Completions are cut from the right so prompt + completion <= ``max_length``;
    a pair whose prompt alone fills ``max_length`` is dropped and counted.
    """
    items = list(pairs)
    stats = TokenizeStats(n_input=len(items))
    rows: list[dict] = []
    profile = template_profile(tokenizer)
    for i, item in enumerate(items):
        pair = validate_preference(item, source=source, index=i)
        convs = {k: prepare_messages(pair[k], profile) for k in ("chosen", "rejected")}
        prompt = encode_chat(tokenizer, convs["chosen"][:-1], add_generation_prompt=True)
        full = {k: encode_chat(tokenizer, v) for k, v in convs.items()}
        n_prompt = min(_common_prefix(prompt, full["chosen"]), _common_prefix(prompt, full["rejected"]))
        if n_prompt < len(prompt):
            logger.warning("%s: row %d: rendered prompt is not a prefix of the full conversation", source, i)
        if n_prompt >= max_length:
            stats.n_dropped_prompt_too_long += 1
            continue
        room = max_length - n_prompt
        completions = {k: _through_eos(v[n_prompt:], tokenizer.eos_token_id) for k, v in full.items()}
        if any(len(v) > room for v in completions.values()):
            stats.n_truncated += 1
        completions = {k: v[:room] for k, v in completions.items()}
        if not completions["chosen"] or not completions["rejected"]:
            stats.n_dropped_no_labels += 1
            continue
        rows.append(
            {
                "prompt_ids": prompt[:n_prompt],
                "chosen_ids": completions["chosen"],
                "rejected_ids": completions["rejected"],
            }
        )
        stats.kept.append(i)
        length = n_prompt + max(len(completions["chosen"]), len(completions["rejected"]))
        stats.lengths.append(length)
        stats.n_tokens += n_prompt + len(completions["chosen"]) + len(completions["rejected"])
        stats.n_trained_tokens += len(completions["chosen"]) + len(completions["rejected"])
    stats.n_kept = len(rows)
    return rows, stats
