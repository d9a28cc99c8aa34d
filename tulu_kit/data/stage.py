"""The ``data`` stage: load, convert, mix, decontaminate and measure the SFT and preference mixes (notebook 01).

Writes to ``out_dir``: ``sft.jsonl`` / ``sft_eval.jsonl`` (``{"messages", "source"}``), ``preference.jsonl`` /
``preference_eval.jsonl`` (``{"chosen", "rejected", "source"}``) and ``report.json`` (exact counts per source,
bad rows dropped, duplicates, contamination, token statistics and packing efficiency). Every file is written
atomically. The SFT and DPO stages read these files.
"""

from __future__ import annotations

import html
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tulu_kit.data.decontam import load_eval_texts, ngram_overlap, remove_contaminated
from tulu_kit.data.formats import convert_rows
from tulu_kit.data.mixer import Mixture, SourceCount, mix, parse_mixer_list
from tulu_kit.data.packing import packing_efficiency, padded_efficiency
from tulu_kit.data.sources import load_rows, parse_source
from tulu_kit.data.tokenize import assistant_token_masks, tokenize_preference, tokenize_sft
from tulu_kit.io import atomic_write_json, write_jsonl

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    out_dir: str = "../runs/lab/data"  # sft.jsonl, preference.jsonl, *_eval.jsonl and report.json go here
    seed: int = 42  # fixes sampling, held-out splits, shuffling and the synthetic data
    sft_mixer_list: list[str | int | float] = field(default_factory=lambda: ["synthetic_sft", 1.0])
    """SFT sources and amounts, alternating: [source, amount, ...]; float = fraction, int = count."""
    preference_mixer_list: list[str | int | float] = field(
        default_factory=lambda: ["synthetic_preference", 1.0]
    )
    """Preference sources and amounts, same rules; [] writes no preference files."""
    synthetic_size: int = 600  # rows made by each synthetic_* source
    eval_fraction: float = 0.05  # share of each source's unique rows held out for *_eval.jsonl
    dedupe: bool = True  # remove repeated conversations (before sampling, so upsampling survives)
    on_bad_row: Literal["error", "drop"] = "error"  # a malformed row stops the run, or is dropped and counted
    tokenizer: str = "../runs/lab/quickstart/model"  # model dir / Hub id for token statistics; "" skips them
    chat_template: str = "tulu"  # template for token statistics ("tokenizer" keeps the tokenizer's own)
    max_length: int = 512  # tokens per example (truncation) and per packed row
    batch_size: int = 8  # rows per padded batch, for the packing-efficiency comparison
    decontam_eval_files: list[str] = field(
        default_factory=list
    )  # eval files (JSON/JSONL/CSV) to check overlap with
    decontam_ngram: int = 13  # word n-gram size of the overlap test
    decontam_remove: bool = False  # drop contaminated training examples from the mix
    toy_benchmarks: int = 0  # held-out toy-world questions per benchmark, written to <out_dir>/toy_benchmarks
    # on-policy preference pairs (Tulu 3, in miniature; tulu_kit.data.onpolicy): replies sampled from this model
    # to the toy world's verifiable prompts, labelled by the verifiers, mixed with the preference sources
    on_policy_model: str = ""  # the SFT model to sample from; "" makes no on-policy pairs
    on_policy_prompts: int = 256  # verifiable prompts (arithmetic and instructions) to sample replies for
    on_policy_samples: int = 4  # replies sampled per prompt
    on_policy_temperature: float = 1.0  # sampling temperature

    def __post_init__(self):
        parse_mixer_list(self.sft_mixer_list, "sft_mixer_list")
        parse_mixer_list(self.preference_mixer_list, "preference_mixer_list")
        for spec, _ in parse_mixer_list(self.sft_mixer_list) + parse_mixer_list(self.preference_mixer_list):
            parse_source(spec)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 2 or self.batch_size < 1 or self.decontam_ngram < 1:
            raise ValueError("max_length must be >= 2, batch_size and decontam_ngram >= 1")
        if self.toy_benchmarks < 0 or self.on_policy_prompts < 1 or self.on_policy_samples < 2:
            raise ValueError("toy_benchmarks must be >= 0, on_policy_prompts >= 1 and on_policy_samples >= 2")
        if self.on_policy_temperature <= 0:
            raise ValueError(f"on_policy_temperature must be > 0, got {self.on_policy_temperature}")


def eval_set_names(paths: list[str]) -> dict[str, str]:
    """Report name -> path of each decontamination eval file: the file name, or more of its path where two
    files share a name (gsm8k/test.jsonl and math500/test.jsonl), so no eval set silently replaces another."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max((len(x) for x in parts), default=1) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            return dict(zip(names, paths))
    raise ValueError(f"decontam_eval_files: a file is listed twice: {paths}")


def _uncount(counts: list[SourceCount], removed: list[dict]) -> None:
    """Move removed (contaminated) rows from each source's n_taken to its n_contaminated."""
    for ex in removed:
        count = next(c for c in counts if c.source == ex["source"] and c.n_taken > 0)
        count.n_taken -= 1
        count.n_contaminated += 1


def load_mixture(
    cfg: DataConfig, mixer_list: list, kind: str, extra: dict[str, list[dict]] | None = None
) -> Mixture:
    """Load and convert every source of a mixer list, then mix them (see :func:`tulu_kit.data.mixer.mix`);
    ``extra``: more sources, name -> rows in the synthetic formats, taken whole (the on-policy pairs)."""
    pools, counts = [], []
    for spec, rows in (extra or {}).items():
        fmt = "messages" if kind == "sft" else "preference_messages"
        converted = convert_rows(fmt, rows, source=spec, on_bad_row=cfg.on_bad_row)
        pools.append((spec, 1.0, converted.examples))
        counts.append(SourceCount(spec, 1.0, n_read=len(rows), n_bad=len(converted.dropped)))
    for spec, amount in parse_mixer_list(mixer_list, f"{kind}_mixer_list"):
        source = parse_source(spec)
        if source.kind != kind:
            raise ValueError(f"{kind}_mixer_list: source '{spec}' holds {source.kind} data, not {kind}")
        rows = load_rows(source, seed=cfg.seed, synthetic_size=cfg.synthetic_size)
        if not rows:
            raise ValueError(f"{kind}_mixer_list: source '{spec}' has no rows (an empty file or split?)")
        fmt = {"synthetic_sft": "messages", "synthetic_preference": "preference_messages"}.get(source.format)
        converted = convert_rows(fmt or source.format, rows, source=spec, on_bad_row=cfg.on_bad_row)
        if not converted.examples:
            why = f"e.g. {converted.dropped[0][1]}" if converted.dropped else "none made an example"
            raise ValueError(f"{kind}_mixer_list: source '{spec}': no usable rows of {len(rows)} ({why})")
        count = SourceCount(spec, amount, n_read=len(rows), n_bad=len(converted.dropped))
        count.bad_rows = [msg for _, msg in converted.dropped[:5]]
        if converted.dropped:
            logger.warning(
                "%s: dropped %d bad rows, e.g. %s", spec, len(converted.dropped), count.bad_rows[0]
            )
        pools.append((spec, amount, converted.examples))
        counts.append(count)
    mixture = mix(pools, seed=cfg.seed, dedupe=cfg.dedupe, eval_fraction=cfg.eval_fraction, counts=counts)
    if pools and not mixture.train:
        raise ValueError(f"{kind}_mixer_list: the mix is empty (every amount took 0 rows): {mixer_list}")
    return mixture


def token_report(cfg: DataConfig, sft: list[dict], preference: list[dict]) -> dict:
    """Token lengths per source, tokenization drops, and packing vs padding efficiency at ``max_length``."""
    from tulu_kit.data.templates import set_chat_template
    from tulu_kit.models import load_tokenizer

    if cfg.tokenizer.startswith((".", "/", "~")) and not Path(cfg.tokenizer).expanduser().exists():
        raise FileNotFoundError(
            f"tokenizer {cfg.tokenizer}: no such directory (run notebook 00 first, or set tokenizer='' to skip "
            "token statistics)"
        )
    tokenizer = set_chat_template(load_tokenizer(cfg.tokenizer), cfg.chat_template)
    out: dict = {"tokenizer": cfg.tokenizer, "chat_template": cfg.chat_template, "max_length": cfg.max_length}
    if sft:
        _, stats = tokenize_sft(sft, tokenizer, cfg.max_length)
        by_source = defaultdict(list)
        for idx, length in zip(stats.kept, stats.lengths):
            by_source[sft[idx]["source"]].append(length)
        out["sft"] = stats.summary()
        out["sft_lengths_by_source"] = dict(by_source)
        out["packing"] = {
            "packed": round(packing_efficiency(stats.lengths, cfg.max_length), 4),
            "padded_to_longest": round(padded_efficiency(stats.lengths, cfg.batch_size), 4),
            "padded_to_max_length": round(
                padded_efficiency(stats.lengths, cfg.batch_size, max_length=cfg.max_length, pad_to_max=True),
                4,
            ),
        }
        out["example"] = trained_segments(tokenizer, _richest(sft)["messages"], cfg.max_length)
    if preference:
        out["preference"] = tokenize_preference(preference, tokenizer, cfg.max_length)[1].summary()
    return out


def _richest(rows: list[dict]) -> dict:
    """The example with the most turns (ties: the first), so the highlighted example shows masking at work."""
    return max(rows, key=lambda r: (len(r["messages"]), r["messages"][0]["role"] == "system"))


def trained_segments(tokenizer, messages: list[dict], max_length: int) -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, trained)`` runs: which characters the loss is computed on."""
    ids, mask = assistant_token_masks(tokenizer, [messages])[0]
    ids, mask = ids[:max_length], mask[:max_length]
    segments: list[tuple[str, bool]] = []
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or bool(mask[k]) != bool(mask[start]):
            segments.append((tokenizer.decode(ids[start:k]), bool(mask[start])))
            start = k
    return segments


def segments_html(segments: list[tuple[str, bool]]) -> str:
    """HTML with trained text highlighted in green and the rest greyed out."""
    style = {True: "background:#c8f7c5;color:#000", False: "color:#888"}
    body = "".join(f'<span style="{style[t]}">{html.escape(s)}</span>' for s, t in segments)
    return f'<pre style="white-space:pre-wrap">{body}</pre>'


def run(cfg: DataConfig) -> dict:
    """Mix, check and measure the data; write the mixes and ``report.json`` to ``cfg.out_dir``."""
    out = Path(cfg.out_dir)

    # ---- load, convert and mix each side
    sft = load_mixture(cfg, cfg.sft_mixer_list, "sft")
    on_policy = None
    extra = {}
    if cfg.on_policy_model:
        from tulu_kit.data.onpolicy import on_policy_preference
        from tulu_kit.data.synthetic import synthetic_rlvr

        rows = synthetic_rlvr(cfg.on_policy_prompts, seed=cfg.seed)
        pairs, on_policy = on_policy_preference(
            cfg.on_policy_model, rows, cfg.on_policy_samples, cfg.on_policy_temperature, seed=cfg.seed
        )
        if not pairs:
            raise ValueError(
                f"on_policy_model {cfg.on_policy_model}: no pair: every sampled reply was correct (or empty)"
            )
        extra["on_policy"] = pairs
    preference = load_mixture(cfg, cfg.preference_mixer_list, "preference", extra)

    # ---- decontaminate against the eval sets
    decontam = None
    if cfg.decontam_eval_files:
        eval_sets = {name: load_eval_texts(p) for name, p in eval_set_names(cfg.decontam_eval_files).items()}
        report = ngram_overlap(sft.train + preference.train, eval_sets, cfg.decontam_ngram)
        decontam = {**report.summary(), "examples": [vars(c) for c in report.contaminated[:50]]}
        if cfg.decontam_remove:
            n_sft = len(sft.train)  # the report checked the SFT rows, then the preference rows
            sft.train, removed = remove_contaminated(sft.train, report)
            _uncount(sft.counts, removed)
            preference.train, removed = remove_contaminated(preference.train, report, offset=n_sft)
            _uncount(preference.counts, removed)
            decontam["removed"] = len(report.indices)

    # ---- token statistics and packing efficiency
    tokens = token_report(cfg, sft.train, preference.train) if cfg.tokenizer else None

    # ---- write
    files = {
        "sft": write_jsonl(out / "sft.jsonl", sft.train),
        "sft_eval": write_jsonl(out / "sft_eval.jsonl", sft.eval),
    }
    if cfg.preference_mixer_list or extra:
        files["preference"] = write_jsonl(out / "preference.jsonl", preference.train)
        files["preference_eval"] = write_jsonl(out / "preference_eval.jsonl", preference.eval)
    report = {
        "counts": {"sft": [vars(c) for c in sft.counts], "preference": [vars(c) for c in preference.counts]},
        "totals": {
            "sft": len(sft.train),
            "sft_eval": len(sft.eval),
            "preference": len(preference.train),
            "preference_eval": len(preference.eval),
        },  # fmt: skip
        "decontamination": decontam,
        "tokens": tokens,
        "on_policy": on_policy,
    }
    if cfg.toy_benchmarks:
        from tulu_kit.data.synthetic import write_toy_benchmarks

        files["toy_benchmarks"] = write_toy_benchmarks(out / "toy_benchmarks", n=cfg.toy_benchmarks)
    atomic_write_json(out / "report.json", report)
    logger.info(
        "data: %d SFT and %d preference training rows -> %s", len(sft.train), len(preference.train), out
    )
    return {**report, "files": {k: str(v) for k, v in files.items()}}
