"""Label masking, templates and packing: property tests over random conversations and every template."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tulu_kit.data.packing import (
    PackingCollator,
    PaddedCollator,
    pack_rows,
    packing_efficiency,
    padded_efficiency,
    sequence_lengths,
)
from tulu_kit.data.templates import CHAT_TEMPLATES, encode_chat, set_chat_template, template_name
from tulu_kit.data.tokenize import IGNORE_INDEX, tokenize_preference, tokenize_sft
from tulu_kit.models import load_model, load_tokenizer

TEMPLATES = ["tulu", "chatml", "llama3", "zephyr"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# message text: words, digits, punctuation, newlines and non-ASCII, no surrounding whitespace (converters strip)
_ALPHABET = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,!?'\"()-:\n") + ["é", "ß", "日", "🙂"]
)
_TEXT = st.text(_ALPHABET, min_size=1, max_size=40).map(str.strip).filter(bool)


@st.composite
def conversations(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        messages += [{"role": "user", "content": draw(_TEXT)}, {"role": "assistant", "content": draw(_TEXT)}]
    return messages


@pytest.fixture(scope="module")
def tokenizers(tiny_model):
    return {name: set_chat_template(load_tokenizer(tiny_model), name) for name in TEMPLATES}


def trained_spans(row):
    spans, current = [], []
    for t, lab in zip(row["input_ids"], row["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == t
            current.append(t)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


@pytest.mark.parametrize("name", TEMPLATES)
@SETTINGS
@given(messages=conversations())
def test_trained_tokens_are_each_assistant_reply_plus_eos(tokenizers, name, messages):
    tok = tokenizers[name]
    rows, stats = tokenize_sft([{"messages": messages}], tok, max_length=4096)
    assert stats.n_kept == 1
    row = rows[0]
    replies = [m["content"] + tok.eos_token for m in messages if m["role"] == "assistant"]
    decoded = [tok.decode(span, clean_up_tokenization_spaces=False) for span in trained_spans(row)]
    assert decoded == replies  # every assistant turn trained, nothing else
    assert row["input_ids"] == encode_chat(tok, messages)  # what apply_chat_template / TRL / vLLM see
    assert row["input_ids"].count(tok.bos_token_id) == 1 and row["input_ids"][0] == tok.bos_token_id


@pytest.mark.parametrize("name", TEMPLATES)
@SETTINGS
@given(messages=conversations())
def test_prefix_fallback_agrees_with_generation_marks(tokenizers, name, messages):
    tok = tokenizers[name]
    plain = copy.deepcopy(tok)
    plain.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with_marks, _ = tokenize_sft([messages], tok, 4096)
    without, _ = tokenize_sft([messages], plain, 4096)
    assert with_marks == without


@pytest.mark.parametrize("name", TEMPLATES)
@SETTINGS
@given(messages=conversations(), data=st.data())
def test_preference_completions_are_the_last_reply_plus_eos(tokenizers, name, messages, data):
    tok = tokenizers[name]
    chosen_text = messages[-1]["content"].strip()  # a pair with identical replies is refused (no preference)
    other = data.draw(_TEXT.filter(lambda text: text.strip() != chosen_text))
    rejected = messages[:-1] + [{"role": "assistant", "content": other}]
    rows, stats = tokenize_preference([{"chosen": messages, "rejected": rejected}], tok, 4096)
    row = rows[0]
    assert row["prompt_ids"] == encode_chat(tok, messages[:-1], add_generation_prompt=True)
    full = encode_chat(tok, messages)  # ChatML / Zephyr put a "\n" after the eos, which is not scored
    assert row["prompt_ids"] + row["chosen_ids"] == full[: len(row["prompt_ids"]) + len(row["chosen_ids"])]
    assert tok.decode(row["chosen_ids"]) == messages[-1]["content"] + tok.eos_token
    assert tok.decode(row["rejected_ids"]) == rejected[-1]["content"] + tok.eos_token


def test_tulu_template_text_is_exact(tokenizers):
    tok = tokenizers["tulu"]
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
        {"role": "assistant", "content": "A2"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert (
        text == "<s><|system|>\nS\n<|user|>\nU1\n<|assistant|>\nA1</s>\n<|user|>\nU2\n<|assistant|>\nA2</s>"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|system|>\nS\n<|user|>\nU1\n<|assistant|>\n"
    assert template_name(tok) == "tulu"


def test_templates_render_their_layouts(tokenizers):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    render = {n: tokenizers[n].apply_chat_template(msgs, tokenize=False) for n in TEMPLATES}
    assert render["chatml"] == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo</s>\n"
    assert render["llama3"] == (
        "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nYo</s>"
    )
    assert render["zephyr"] == "<s><|user|>\nHi</s>\n<|assistant|>\nYo</s>\n"
    assert all("{% generation %}" in CHAT_TEMPLATES[n] for n in TEMPLATES)


def test_no_bos_in_template_when_tokenizer_adds_none(tiny_model):
    tok = load_tokenizer(tiny_model)
    tok.backend_tokenizer.post_processor = None  # now a plain encode adds no BOS (GPT-2 / Qwen style)
    set_chat_template(tok, "tulu")
    assert not tok.chat_template.startswith("{{ bos_token }}")
    ids = encode_chat(tok, [{"role": "user", "content": "Hi"}])
    assert tok.bos_token_id not in ids
    with pytest.raises(ValueError, match="unknown chat template"):
        set_chat_template(tok, "vicuna")


def test_truncation_drops_rows_with_nothing_to_train(tokenizers):
    tok = tokenizers["tulu"]
    long_user = {"role": "user", "content": "word " * 200 + "end"}
    rows, stats = tokenize_sft(
        [
            [long_user, {"role": "assistant", "content": "never seen"}],
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}],
        ],
        tok,
        max_length=20,
    )
    assert stats.n_input == 2 and stats.n_dropped_no_labels == 1 and stats.n_kept == 1 and stats.kept == [1]
    assert all(len(r["input_ids"]) <= 20 for r in rows)
    assert [tok.decode(s) for s in trained_spans(rows[0])] == ["Hello there, friend.</s>"]  # the whole reply
    # truncation cuts from the right: the kept prefix is the full sequence's prefix
    full, _ = tokenize_sft(
        [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x " * 40 + "y"}]], tok, 4096
    )
    cut, st_ = tokenize_sft(
        [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x " * 40 + "y"}]], tok, 16
    )
    assert cut[0]["input_ids"] == full[0]["input_ids"][:16] and st_.n_truncated == 1


def test_last_assistant_only(tokenizers):
    tok = tokenizers["tulu"]
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]  # fmt: skip
    rows, _ = tokenize_sft([msgs], tok, 4096, train_on="last_assistant")
    assert [tok.decode(s) for s in trained_spans(rows[0])] == ["d</s>"]


def test_preference_prompt_too_long_is_dropped(tokenizers):
    tok = tokenizers["tulu"]
    p = [{"role": "user", "content": "long " * 100}]
    pair = {
        "chosen": p + [{"role": "assistant", "content": "a"}],
        "rejected": p + [{"role": "assistant", "content": "b"}],
    }
    rows, stats = tokenize_preference([pair], tok, 32)
    assert rows == [] and stats.n_dropped_prompt_too_long == 1


# ---------------------------------------------------------------- packing


@st.composite
def token_rows(draw):
    rows = []
    for _ in range(draw(st.integers(1, 12))):
        n = draw(st.integers(1, 30))
        ids = draw(st.lists(st.integers(3, 900), min_size=n, max_size=n))
        labels = [t if draw(st.booleans()) else IGNORE_INDEX for t in ids]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


@settings(max_examples=100, deadline=None)
@given(rows=token_rows(), budget=st.integers(30, 80))
def test_packed_positions_never_run_across_two_examples(rows, budget):
    from transformers.masking_utils import find_packed_sequence_indices

    packed, stats = pack_rows(rows, budget, seed=0)
    assert all(len(p["input_ids"]) <= budget for p in packed)
    assert sorted(len(r["input_ids"]) for r in rows) == sorted(
        n for p in packed for n in sequence_lengths(p["position_ids"])
    )
    assert stats.real_tokens == sum(len(r["input_ids"]) for r in rows)
    batch = PackingCollator(return_flash_attn_kwargs=True)(packed)
    pos = batch["position_ids"][0].tolist()
    lengths = sequence_lengths(pos)
    # each example's positions are 0..len-1, and transformers sees exactly these boundaries
    seg = find_packed_sequence_indices(batch["position_ids"])
    seg = [0] * len(pos) if seg is None else seg[0].tolist()
    start = 0
    for k, n in enumerate(lengths):
        assert pos[start : start + n] == list(range(n))
        assert set(seg[start : start + n]) == {k}
        assert batch["labels"][0, start].item() == IGNORE_INDEX  # no label predicted across a boundary
        start += n
    assert batch["cu_seq_lens_q"].tolist() == [sum(lengths[:k]) for k in range(len(lengths) + 1)]
    assert batch["max_length_q"] == max(lengths)


def test_packed_forward_equals_separate_forwards(tiny_model, tokenizers):
    tok = tokenizers["tulu"]
    convs = [
        [
            {"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "The answer is 5."},
        ],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "user", "content": "Reverse red blue"}, {"role": "assistant", "content": "blue red"}],
    ]
    rows, _ = tokenize_sft(convs, tok, 256)
    batch = PackingCollator()(rows)
    for attn in ("sdpa", "eager"):
        model = load_model(tiny_model, attn_implementation=attn).train()  # as under the Trainer
        with torch.no_grad():
            packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
            # the trap the collator's use_cache=False avoids: a KV cache disables the packed mask
            if attn == "sdpa":
                leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
                assert not torch.allclose(
                    leaky[len(rows[0]["input_ids"]) :], packed[len(rows[0]["input_ids"]) :]
                )
            start = 0
            for r in rows:
                alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
                n = len(r["input_ids"])
                torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-4)
                start += n
        # a padded batch gives the same summed loss over trained tokens as the packed one
        padded = PaddedCollator(tok.pad_token_id)(rows)
        with torch.no_grad():
            lp = model(**batch).loss
            lq = model(**padded).loss
        torch.testing.assert_close(lp, lq, atol=1e-5, rtol=1e-4)


def test_padded_collator_and_efficiencies():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    out = PaddedCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert out["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert packing_efficiency([6, 4, 5, 5], 10) == 1.0
    assert padded_efficiency([6, 4, 5, 5], 2) == pytest.approx(20 / 22)
    assert padded_efficiency([6, 4], 2, max_length=10, pad_to_max=True) == pytest.approx(0.5)


def test_own_template_is_kept_or_refused(tiny_model):
    tok = load_tokenizer(tiny_model)
    before = tok.chat_template
    assert set_chat_template(tok, "tokenizer").chat_template == before
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        set_chat_template(tok, "tokenizer")
