"""Batch collation for SFT: padding-free packing and padded batches (notebook 01; used by the sft stage).

Padding-free packing (Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination",
arXiv 2107.02027; the HF "packing with FlashAttention-2" recipe): the examples of a batch are concatenated into a
single row ``[1, T]`` with ``position_ids`` restarting at 0 for each example and no ``attention_mask``. transformers
turns restarting positions into a block-diagonal causal mask for sdpa/eager (``masking_utils.
find_packed_sequence_indices``), and into ``cu_seq_lens`` for flash-attn varlen, so no example attends to another.
The first label of each example is set to -100 so no token is trained to predict across a boundary.

``pack_rows`` groups tokenized rows into bins of at most ``max_tokens`` (best-fit decreasing, as TRL's ``bfd``);
``PackingCollator`` turns a list of rows or bins into one packed batch; ``PaddedCollator`` is the padded
alternative. ``packing_efficiency`` and ``padded_efficiency`` report real tokens / slots.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tulu_kit.data.tokenize import IGNORE_INDEX


def _positions(row: dict) -> list[int]:
    if "position_ids" in row:
        return list(row["position_ids"])
    return list(range(len(row["input_ids"])))


def _labels(row: dict) -> list[int]:
    return list(row["labels"]) if "labels" in row else list(row["input_ids"])


@dataclass
class PackingCollator:
    """HF ``data_collator``: concatenate a batch of rows (or packed bins) into one padding-free row.

    Returns ``input_ids``, ``labels`` and ``position_ids`` of shape ``[1, T]``, ``use_cache=False`` and, with
    ``return_flash_attn_kwargs``, ``cu_seq_lens_q/k`` and ``max_length_q/k`` for flash-attn varlen.
    """

    return_flash_attn_kwargs: bool = False
    # transformers (5.x) only builds the block-diagonal mask from restarting positions when no KV cache is made;
    # models default to ``config.use_cache=True`` even in training, which would silently let examples attend to
    # each other under sdpa/eager. The batch therefore asks the forward for ``use_cache=False``.
    disable_cache: bool = True

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for row in rows:
            pos, lab = _positions(row), _labels(row)
            for k, p in enumerate(pos):
                if (
                    p == 0
                ):  # a new example starts: its first token has no in-example context to predict it from
                    lab[k] = IGNORE_INDEX
            ids += list(row["input_ids"])
            labels += lab
            positions += pos
        out = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }
        if self.disable_cache:
            out["use_cache"] = False
        if self.return_flash_attn_kwargs:
            lengths = sequence_lengths(positions)
            cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
            out.update(
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths)
            )
        return out


@dataclass
class PaddedCollator:
    """HF ``data_collator``: pad a batch on the right to its longest row (labels padded with -100)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids, labels, mask = [], [], []
        for r in rows:
            n = len(r["input_ids"])
            pad = longest - n
            ids.append(list(r["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(_labels(r) + [IGNORE_INDEX] * pad)
            mask.append([1] * n + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }


def sequence_lengths(position_ids: Sequence[int]) -> list[int]:
    """Lengths of the examples in a packed row: a new example starts wherever the position does not grow by 1."""
    lengths: list[int] = []
    prev = None
    for p in position_ids:
        if prev is None or p != prev + 1:
            lengths.append(0)
        lengths[-1] += 1
        prev = p
    return lengths


def _best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of row indices, each holding at most ``capacity`` tokens (best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, bin index)
    for i in order:
        need = lengths[i]
        k = bisect.bisect_left(free, (need, -1))
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - need, len(bins) - 1))
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - need, b))
    return bins


@dataclass
class PackStats:
    n_rows: int
    n_bins: int
    n_truncated: int
    real_tokens: int
    slots: int

    @property
    def efficiency(self) -> float:
        return self.real_tokens / max(1, self.slots)


def pack_rows(rows: Sequence[dict], max_tokens: int, *, seed: int | None = 0) -> tuple[list[dict], PackStats]:
    """Group rows into bins of at most ``max_tokens`` tokens, each bin one row with restarting ``position_ids``.

    Rows longer than ``max_tokens`` are cut (and counted). Bins are shuffled with ``seed`` (``None``: keep the
    best-fit order) so that long and short bins mix across batches.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    cut = [{k: list(v)[:max_tokens] for k, v in r.items() if k in ("input_ids", "labels")} for r in rows]
    n_truncated = sum(1 for r in rows if len(r["input_ids"]) > max_tokens)
    lengths = [len(r["input_ids"]) for r in cut]
    bins = _best_fit_decreasing(lengths, max_tokens)
    if seed is not None:
        random.Random(seed).shuffle(bins)
    packed = []
    for b in bins:
        ids, labels, pos = [], [], []
        for i in sorted(b):
            ids += cut[i]["input_ids"]
            labels += _labels(cut[i])
            pos += list(range(lengths[i]))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    stats = PackStats(len(rows), len(bins), n_truncated, sum(lengths), len(bins) * max_tokens)
    return packed, stats


def packing_efficiency(lengths: Sequence[int], max_tokens: int) -> float:
    """Real tokens / slots when ``lengths`` are packed (best-fit decreasing) into rows of ``max_tokens``."""
    lengths = [min(n, max_tokens) for n in lengths]
    bins = _best_fit_decreasing(lengths, max_tokens)
    return sum(lengths) / max(1, len(bins) * max_tokens)


def padded_efficiency(
    lengths: Sequence[int], batch_size: int, *, max_length: int | None = None, pad_to_max: bool = False
) -> float:
    """Real tokens / slots for padded batches of ``batch_size`` rows in the given order.

    Each batch pads to its longest row (``pad_to_max``: to ``max_length``, a fixed-shape padded batch).
    """
    if max_length is not None:
        lengths = [min(n, max_length) for n in lengths]
    real = slots = 0
    for s in range(0, len(lengths), batch_size):
        batch = lengths[s : s + batch_size]
        width = max_length if (pad_to_max and max_length) else max(batch)
        real += sum(batch)
        slots += width * len(batch)
    return real / max(1, slots)
