"""Chat templates as Jinja in the tokenizer, so apply_chat_template, TRL and vLLM render the same text.

Assistant turns are wrapped in ``{% generation %}`` marks so ``return_assistant_tokens_mask`` finds them; the mark
covers the assistant content and the eos that ends the turn, which is exactly what Tulu trains on. Every template
ends an assistant turn with the tokenizer's ``eos_token`` (for a ChatML or Llama-3 instruct tokenizer that *is*
``<|im_end|>`` / ``<|eot_id|>``), so a model learns to stop.

BOS: a template begins with ``{{ bos_token }}`` when the tokenizer adds BOS on a plain encode (Llama-2/3 style),
so the rendered text carries exactly one BOS and must be tokenized with ``add_special_tokens=False`` -- which is
what ``apply_chat_template(tokenize=True)``, TRL and vLLM do (and what the HF docs ask of a separate tokenize
step). ``encode_chat`` does it for you. Used by notebooks 00 and 01 and by every training and eval stage.
"""

from __future__ import annotations

import re

# open-instruct's `tulu` template (dataset_transformation.py CHAT_TEMPLATES["tulu"]):
# "<|user|>\n{c}\n", "<|assistant|>\n{c}{eos}" + "\n" except after the last message; prompt "<|assistant|>\n".
TULU = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)

# ChatML (OLMo 2/3, Qwen, open-instruct's `olmo` family without its default system prompt):
# "<|im_start|>{role}\n{c}<|im_end|>\n"; the assistant turn ends with eos_token (= <|im_end|> for ChatML vocabs).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3 instruct layout (meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json, without the content trim);
# the assistant turn ends with eos_token (= <|eot_id|> for the Llama-3 instruct vocabulary).
LLAMA3 = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Zephyr (HuggingFaceH4/zephyr-7b-beta; open-instruct CHAT_TEMPLATES["zephyr"]): every turn ends "{eos}\n".
ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "tulu": TULU,
    "chatml": CHATML,
    "olmo": CHATML,
    "llama3": LLAMA3,
    "zephyr": ZEPHYR,
}
OWN = "tokenizer"  # the name that keeps the tokenizer's own template
_BOS_PREFIX = "{{ bos_token }}"


def adds_bos(tokenizer) -> bool:
    """Whether a plain ``tokenizer(text)`` starts with BOS (Llama-2/3 style post-processors)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def set_chat_template(tokenizer, name: str, add_bos: bool | None = None):
    """Put template ``name`` on ``tokenizer`` (in place) and return it.

    ``add_bos=None`` prepends ``{{ bos_token }}`` exactly when the tokenizer adds BOS on a plain encode, so the
    templated sequence starts with the BOS the model was pretrained with, once. ``name="tokenizer"`` keeps the
    tokenizer's own template.
    """
    if name == OWN:
        if not tokenizer.chat_template:
            raise ValueError("chat template 'tokenizer' asked for, but this tokenizer has no chat template")
        return tokenizer
    if name not in CHAT_TEMPLATES:
        known = ", ".join([*CHAT_TEMPLATES, OWN])
        raise ValueError(f"unknown chat template '{name}'; known: {known}")
    if add_bos is None:
        add_bos = adds_bos(tokenizer)
    tokenizer.chat_template = (_BOS_PREFIX if add_bos else "") + CHAT_TEMPLATES[name]
    return tokenizer


def template_name(tokenizer) -> str | None:
    """The name of the kit template the tokenizer carries (ignoring the BOS prefix), or None."""
    template = tokenizer.chat_template or ""
    body = template[len(_BOS_PREFIX) :] if template.startswith(_BOS_PREFIX) else template
    for name, jinja in CHAT_TEMPLATES.items():
        if body == jinja:
            return name
    return None


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation, exactly as ``apply_chat_template``, TRL and vLLM produce them (one BOS)."""
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
        )["input_ids"]
    )


def has_generation_marks(tokenizer) -> bool:
    """Whether the template marks assistant turns with ``{% generation %}`` (needed for assistant masks)."""
    template = tokenizer.chat_template
    return isinstance(template, str) and bool(re.search(r"\{%-?\s*generation\s*-?%\}", template))
