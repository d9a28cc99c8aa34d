"""Every chat template the kit can be given by name: trained exactly, or refused with the kit's own error.

Property tests (random multi-turn chats, with and without a system turn, odd whitespace, unicode) over each of
TRL's training templates (``trl/chat_templates/*_training.jinja``) and open-instruct's ``tulu``, ``tulu_thinker``
and ``olmo``, all on the tiny model's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tulu_kit.data.masks import assistant_token_masks, prepare_messages, template_profile
from tulu_kit.data.packing import PackingCollator
from tulu_kit.data.templates import (
    CHAT_TEMPLATES,
    ChatTemplateError,
    available_templates,
    set_chat_template,
    template_name,
    trl_templates,
)
from tulu_kit.data.tokenize import IGNORE_INDEX, tokenize_preference, tokenize_sft
from tulu_kit.models import load_model, load_tokenizer

ASSETS = Path(__file__).parent / "assets"
OPEN_INSTRUCT = ["tulu", "tulu_thinker", "olmo"]
TRL = sorted(trl_templates())
TEMPLATES = TRL + OPEN_INSTRUCT
EOS = "</s>"  # the tiny tokenizer's eos_token

# What each template trains around a reply, whitespace removed: (before, after a non-final reply, after the
# final reply). Read off the templates' Jinja; the kit learns the same by probing, this table checks it.
_IM_END = ("", "<|im_end|>", "<|im_end|>")
_QWEN3 = ("<think></think>", "<|im_end|>", "<|im_end|>")
MARKERS = {
    "trl/cohere": ("", "<|END_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    "trl/cohere2": ("", "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"),
    "trl/deepseek_r1_distill": ("<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "trl/diffusion_gemma": ("", "<turn|>", "<turn|>"),
    "trl/gemma": ("", "<end_of_turn>", "<end_of_turn>"),
    "trl/gemma3": ("", "<end_of_turn>", "<end_of_turn>"),
    "trl/glm4moe": ("<think></think>", "<|user|>", "<|user|>"),  # GLM stops by emitting the next role
    "trl/gptoss": ("<|start|>assistant<|channel|>final<|message|>", "<|end|>", "<|return|>"),
    "trl/idefics3": ("", "<end_of_utterance>", "<end_of_utterance>"),
    "trl/lfm2": _IM_END,
    "trl/lfm2_v2": _IM_END,
    "trl/llama3": ("", "<|eot_id|>", "<|eot_id|>"),
    "trl/llava_next": ("", EOS, EOS),
    "trl/muse_glimmer": ("<|start|>assistantto=user<|message|>", "<|eot|>", "<|eot|>"),
    "trl/nemotron_3_5_lightning": _IM_END,
    "trl/nemotron_3_nano": _IM_END,
    "trl/nemotron_3_super": _IM_END,
    "trl/nemotron_3_ultra": _IM_END,
    "trl/phi3": ("", "<|end|>", "<|end|>" + EOS),
    "trl/phi3_5": ("", "<|end|>", "<|end|>" + EOS),
    "trl/qwen2_5": _IM_END,
    "trl/qwen2_5_vl": _IM_END,
    "trl/qwen3": _QWEN3,
    "trl/qwen3_5_nothink": _QWEN3,
    "trl/qwen3_5_think": _QWEN3,
    "trl/qwen3_6": _QWEN3,
    "trl/qwen3_8": _QWEN3,
    "trl/qwen3_instruct_2507": _IM_END,
    "trl/qwen3_vl": _IM_END,
    "trl/smolvlm": ("", "<end_of_utterance>", "<end_of_utterance>"),
    "tulu": ("", EOS, EOS),
    "tulu_thinker": ("", EOS, EOS),
    "olmo": ("", "<|im_end|>", EOS),
}
# Refused outright: DeepSeek-V3's training template prompts with "<think>\n" but drops every reasoning block
# from the replies it trains on, so no reply is both trained whole and prompted the same way at eval time.
REFUSED = {"trl/deepseekv3"}
# The generation prompt opens a think block, so every reply must carry its reasoning ("<think>...</think>").
THINKING = {"tulu_thinker", "trl/deepseek_r1_distill"} | {t for t in TRL if "nemotron_3" in t}
# Re-render earlier turns without their reasoning: a reasoning chat of more than one reply is refused.
DROPS_EARLIER_REASONING = {t for t in TRL if "nemotron_3" in t}
# Templates that refuse a system turn: the kit merges it into the first user turn.
MERGES_SYSTEM = {"trl/gemma"}
# Vision-language templates that read only text content parts: the kit feeds the text as one part.
CONTENT_PARTS = {"trl/idefics3", "trl/llava_next", "trl/smolvlm"}

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# words, digits, punctuation, odd whitespace and non-ASCII (no "<", which would spell template markers)
_ALPHABET = list("abcxyzABZ019 .,!?'\"()-:_\n\t") + ["é", "ß", "日", "本", "🙂", "\u00a0"]
_TEXT = st.lists(st.sampled_from(_ALPHABET + ["  ", "\n\n"]), min_size=1, max_size=16).map("".join)
_TEXT = _TEXT.filter(lambda s: s.strip())


@st.composite
def conversations(draw, thinking: bool = False):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        reply = draw(_TEXT)
        if thinking:
            reply = f"<think>\n{draw(_TEXT).strip()}\n</think>\n\n{reply}"
        messages += [{"role": "user", "content": draw(_TEXT)}, {"role": "assistant", "content": reply}]
    return messages


def _compact(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def tokenizers(tiny_model):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = set_chat_template(load_tokenizer(tiny_model), name)
        return cache[name]

    return get


def _spans(ids, mask):
    spans, prev = [], 0
    for t, m in zip(ids, mask):
        if m and not prev:
            spans.append([])
        if m:
            spans[-1].append(t)
        prev = m
    return spans


def _refused(name: str, messages: list[dict]) -> bool:
    n_replies = sum(m["role"] == "assistant" for m in messages)
    return name in REFUSED or (name in DROPS_EARLIER_REASONING and n_replies > 1)


def test_every_trl_training_template_is_covered():
    assert len(TRL) == 31  # TRL 1.16 ships 31 training templates
    assert set(MARKERS) | REFUSED == set(TEMPLATES)
    assert set(available_templates()) >= set(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
@SETTINGS
@given(data=st.data())
def test_trained_tokens_are_the_replies_plus_the_end_of_turn_marker(tokenizers, name, data):
    tok = tokenizers(name)
    messages = data.draw(conversations(thinking=name in THINKING))
    if _refused(name, messages):
        with pytest.raises(ChatTemplateError, match=name):
            tokenize_sft([messages], tok, 8192)
        return
    rows, stats = tokenize_sft([messages], tok, 8192)
    assert stats.n_kept == 1
    row = rows[0]
    trained = [t if lab != IGNORE_INDEX else None for t, lab in zip(row["input_ids"], row["labels"])]
    spans = _spans(row["input_ids"], [t is not None for t in trained])
    decoded = [_compact(tok.decode(s, skip_special_tokens=False)) for s in spans]
    before, mid, last = MARKERS[name]
    replies = [_compact(m["content"]) for m in messages if m["role"] == "assistant"]
    if name in THINKING and name != "trl/deepseek_r1_distill":
        before = ""  # a reasoning reply stands where the template's empty think block would be
    expected = [before + r + (last if k == len(replies) - 1 else mid) for k, r in enumerate(replies)]
    assert decoded == expected
    profile = template_profile(tok)
    assert profile.merge_system == (name in MERGES_SYSTEM)
    assert profile.content_parts == (name in CONTENT_PARTS)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_templates_say_why_before_any_row_is_trained(tokenizers, name):
    with pytest.raises(ChatTemplateError, match=f"'{name}' cannot train text chats exactly"):
        template_profile(tokenizers(name))


def test_a_system_turn_is_merged_into_the_first_user_turn_for_gemma(tokenizers):
    tok = tokenizers("trl/gemma")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
    ]
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template(messages, tokenize=False)  # the template itself refuses
    rows, _ = tokenize_sft([messages], tok, 512)
    text = tok.decode(rows[0]["input_ids"], skip_special_tokens=False)
    assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>" in text


def test_a_template_that_trains_the_wrong_tokens_is_stopped_naming_it(tiny_model):
    tok = load_tokenizer(tiny_model)
    # user text inside the generation marks: trains the prompt too, the mistake no error used to reveal
    user = "{{ '<|user|>\n' + message['content'] + '\n' }}"
    assert user in CHAT_TEMPLATES["tulu"]
    tok.chat_template = CHAT_TEMPLATES["tulu"].replace(
        user, "{% generation %}" + user + "{% endgeneration %}"
    )
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    with pytest.raises(ChatTemplateError, match="the tokenizer's own"):
        tokenize_sft([msgs], tok, 512)
    # only the end-of-utterance marker trained (TRL's SmolVLM template fed plain strings): refused, never silent
    assert "message['content'] + eos_token" in CHAT_TEMPLATES["tulu"]
    tok.chat_template = CHAT_TEMPLATES["tulu"].replace("message['content'] + eos_token", "eos_token")
    with pytest.raises(ChatTemplateError):
        tokenize_sft([msgs], tok, 512)


@pytest.mark.parametrize("name", TEMPLATES)
@SETTINGS
@given(data=st.data())
def test_the_mask_of_k_turns_is_a_prefix_of_the_mask_of_k_plus_1(tokenizers, name, data):
    if name in REFUSED:
        return
    tok = tokenizers(name)
    longer = data.draw(conversations(thinking=name in THINKING))
    if sum(m["role"] == "assistant" for m in longer) < 2 or _refused(name, longer):
        return
    shorter = longer[:-2]
    (ids_k, mask_k), (ids_k1, mask_k1) = assistant_token_masks(tok, [shorter, longer])
    n = 0
    while n < len(ids_k) and ids_k[n] == ids_k1[n]:
        n += 1
    assert mask_k[:n] == mask_k1[:n]
    if name in NOT_PREFIX_PRESERVING:
        # only the final turn's end marker differs: every earlier token, and the last reply, are shared
        last_start = max(i for i in range(len(mask_k)) if mask_k[i] and (i == 0 or not mask_k[i - 1]))
        assert n > last_start
    else:
        assert n == len(ids_k)


# the final assistant turn ends differently from earlier ones (open-instruct's olmo: eos vs <|im_end|>;
# gpt-oss: <|return|> vs <|end|>; Phi-3: an extra eos), so k turns are not a token prefix of k + 1
NOT_PREFIX_PRESERVING = {"olmo", "trl/gptoss", "trl/phi3", "trl/phi3_5"}


@pytest.mark.parametrize("name", sorted(set(TEMPLATES) - REFUSED))
@SETTINGS
@given(data=st.data())
def test_the_generation_prompt_is_how_training_text_starts(tokenizers, name, data):
    """Train and eval prompt the same way: the eval prompt is a prefix of the text the reply was trained in."""
    tok = tokenizers(name)
    messages = data.draw(conversations(thinking=name in THINKING))
    if _refused(name, messages):
        return
    prepared = prepare_messages(messages, template_profile(tok))
    prompt = tok.apply_chat_template(prepared[:-1], tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(prepared, tokenize=False).startswith(prompt)


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model, attn_implementation="sdpa").eval()


def _token_losses(model, input_ids, labels, position_ids=None) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0]
    target = labels[0, 1:]
    losses = F.cross_entropy(logits[:-1], target, reduction="none", ignore_index=IGNORE_INDEX)
    return losses[target != IGNORE_INDEX]


@pytest.mark.parametrize("name", sorted(set(TEMPLATES) - REFUSED))
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_packed_rows_give_the_same_per_token_loss_as_unpacked(tokenizers, model, name, data):
    tok = tokenizers(name)
    single = name in DROPS_EARLIER_REASONING
    convs = []
    while len(convs) < 3:
        c = data.draw(conversations(thinking=name in THINKING))
        if not (single and sum(m["role"] == "assistant" for m in c) > 1):
            convs.append(c)
    rows, _ = tokenize_sft(convs, tok, 8192)
    unpacked = torch.cat(
        [_token_losses(model, torch.tensor([r["input_ids"]]), torch.tensor([r["labels"]])) for r in rows]
    )
    batch = PackingCollator()(rows)
    packed = _token_losses(model, batch["input_ids"], batch["labels"], batch["position_ids"])
    assert packed.shape == unpacked.shape and packed.numel() > 0
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", OPEN_INSTRUCT)
@SETTINGS
@given(data=st.data())
def test_open_instruct_templates_render_exactly_as_open_instruct(tokenizers, tiny_model, name, data):
    originals = json.loads((ASSETS / "open_instruct_chat_templates.json").read_text())
    kit = tokenizers(name)
    theirs = load_tokenizer(tiny_model)
    theirs.chat_template = originals[name]
    messages = data.draw(conversations(thinking=name == "tulu_thinker"))
    for upto, prompt in ((len(messages), False), (len(messages) - 1, True)):
        ours = kit.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt)
        # the kit writes the BOS this tokenizer adds on a plain encode; open-instruct's tokenizer call adds it
        assert ours == kit.bos_token + theirs.apply_chat_template(
            messages[:upto], tokenize=False, add_generation_prompt=prompt
        )
    assert template_name(kit) == name


@pytest.mark.parametrize("name", ["trl/gemma", "trl/smolvlm", "tulu_thinker"])
def test_preference_pairs_use_the_same_conversion(tokenizers, name):
    tok = tokenizers(name)
    reply = "<think>\nhm\n</think>\n\nYes" if name in THINKING else "Yes"
    chosen = [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": reply},
    ]
    rejected = chosen[:-1] + [{"role": "assistant", "content": reply.replace("Yes", "No")}]
    rows, stats = tokenize_preference([{"chosen": chosen, "rejected": rejected}], tok, 512)
    assert stats.n_kept == 1
    assert "Yes" in tok.decode(rows[0]["chosen_ids"]) and "No" in tok.decode(rows[0]["rejected_ids"])
    assert "Sys" in tok.decode(rows[0]["prompt_ids"])
