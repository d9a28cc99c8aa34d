"""Chat templates as Jinja in the tokenizer, so apply_chat_template, TRL and vLLM render the same text.

Assistant turns are wrapped in ``{% generation %}`` marks so ``return_assistant_tokens_mask`` finds them; the mark
covers the assistant content and the eos that ends the turn, which is exactly what Tulu trains on. Every template
ends an assistant turn with the tokenizer's ``eos_token`` (for a ChatML or Llama-3 instruct tokenizer that *is*
``<|im_end|>`` / ``<|eot_id|>``), so a model learns to stop.

BOS: a template begins with ``{{ bos_token }}`` when the tokenizer adds BOS on a plain encode (Llama-2/3 style),
so the rendered text carries exactly one BOS and must be tokenized with ``add_special_tokens=False`` -- which is
what ``apply_chat_template(tokenize=True)``, TRL and vLLM do (and what the HF docs ask of a separate tokenize
step). ``encode_chat`` does it for you. Used by notebooks 00 and 01 and by every training and eval stage.

By name (:func:`set_chat_template`): the kit's ``tulu``, ``tulu_thinker`` and ``olmo`` (open-instruct's templates of
those names, rendering the same text, with generation marks added), ``chatml``, ``llama3``, ``zephyr``; and each
of TRL's training templates as ``trl/<model>`` (``trl/qwen3``, ``trl/gemma3``, ...: TRL's
``chat_templates/*_training.jinja``, used verbatim). Whether a template trains exactly what it should is not
taken on trust: ``tulu_kit.data.tokenize.template_profile`` probes it and every tokenized row is checked.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

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

# open-instruct's `tulu_thinker` (same layout as `tulu`; the generation prompt opens the reasoning block, so the
# replies it trains on start with "<think>", and training and eval prompt the same way).
TULU_THINKER = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ content + eos_token }}{% endgeneration %}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>\n<think>' }}"
    "{% endif %}"
    "{% endfor %}"
)

# open-instruct's `olmo` (OLMo 2/3 SFT): ChatML with a default system prompt when none is given; a non-final
# assistant turn ends with <|im_end|>\n, the final one with eos_token.
_OLMO_SYSTEM = (
    "You are OLMo, a helpful function-calling AI assistant built by Ai2. Your date cutoff is November 2024, and "
    "your model weights are available at https://huggingface.co/allenai. You do not currently have access to any "
    "functions. <functions></functions>"
)
OLMO = (
    "{% set has_system = messages|selectattr('role', 'equalto', 'system')|list|length > 0 %}"
    "{% if not has_system %}"
    "{{ '<|im_start|>system\n" + _OLMO_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + message['content'] }}"
    "{% if message.get('functions', none) is not none %}"
    "{{ ' <functions>' + message['functions'] + '</functions><|im_end|>\n' }}"
    "{% else %}"
    "{{ ' You do not currently have access to any functions. <functions></functions><|im_end|>\n' }}"
    "{% endif %}"
    "{% elif message['role'] == 'user' %}"
    "{% if message.get('functions', none) is not none %}"
    "{{ '<|im_start|>user\n' + message['content'] + '\n' + '<functions>' + message['functions'] + "
    "'</functions><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>user\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}"
    "{% if message.get('content', none) is not none %}"
    "{{ message['content'] }}"
    "{% endif %}"
    "{% if message.get('function_calls', none) is not none %}"
    "{{ '<function_calls>' + message['function_calls'] + '</function_calls>' }}"
    "{% endif %}"
    "{% if not loop.last %}{{ '<|im_end|>' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endgeneration %}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% elif message['role'] == 'environment' %}"
    "{{ '<|im_start|>environment\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
    "{% endfor %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "tulu": TULU,
    "tulu_thinker": TULU_THINKER,
    "olmo": OLMO,
    "chatml": CHATML,
    "llama3": LLAMA3,
    "zephyr": ZEPHYR,
}
OPEN_INSTRUCT = ("tulu", "tulu_thinker", "olmo")  # render exactly as open-instruct's templates of these names
OWN = "tokenizer"  # the name that keeps the tokenizer's own template
TRL_PREFIX = "trl/"  # "trl/qwen3": TRL's training template trl/chat_templates/qwen3_training.jinja
_BOS_PREFIX = "{{ bos_token }}"


class ChatTemplateError(ValueError):
    """A chat template that cannot be used as asked; the message names the template."""


def trl_templates() -> dict[str, Path]:
    """TRL's training templates (with ``{% generation %}`` marks) by kit name: ``trl/<model>`` -> file."""
    try:
        import trl
    except ImportError:
        return {}
    folder = Path(trl.__file__).parent / "chat_templates"
    suffix = "_training.jinja"
    return {TRL_PREFIX + p.name[: -len(suffix)]: p for p in sorted(folder.glob("*" + suffix))}


def available_templates() -> list[str]:
    """Every name ``set_chat_template`` accepts."""
    return [*CHAT_TEMPLATES, *trl_templates(), OWN]


def adds_bos(tokenizer) -> bool:
    """Whether a plain ``tokenizer(text)`` starts with BOS (Llama-2/3 style post-processors)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def set_chat_template(tokenizer, name: str, add_bos: bool | None = None):
    """Put template ``name`` on ``tokenizer`` (in place) and return it.

    ``name`` is one of the kit's templates (``tulu``, ``tulu_thinker``, ``olmo``: open-instruct's, with generation
    marks), one of TRL's training templates (``trl/qwen3``, ``trl/llama3``, ...; see :func:`available_templates`)
    or ``"tokenizer"`` to keep the tokenizer's own. For the kit's templates ``add_bos=None`` prepends
    ``{{ bos_token }}`` exactly when the tokenizer adds BOS on a plain encode, so the templated sequence starts
    with the BOS the model was pretrained with, once; TRL's templates are used verbatim (they write their own).
    """
    if name == OWN:
        if not tokenizer.chat_template:
            raise ChatTemplateError(
                "chat template 'tokenizer' asked for, but this tokenizer has no chat template"
            )
        return tokenizer
    if name.startswith(TRL_PREFIX):
        trl = trl_templates()
        if name not in trl:
            raise ChatTemplateError(f"unknown chat template '{name}'; TRL ships: {', '.join(trl)}")
        tokenizer.chat_template = trl[name].read_text(encoding="utf-8")
        return tokenizer
    if name not in CHAT_TEMPLATES:
        raise ChatTemplateError(f"unknown chat template '{name}'; known: {', '.join(available_templates())}")
    if add_bos is None:
        add_bos = adds_bos(tokenizer)
    tokenizer.chat_template = (_BOS_PREFIX if add_bos else "") + CHAT_TEMPLATES[name]
    return tokenizer


def template_name(tokenizer) -> str | None:
    """The name of the kit or TRL template the tokenizer carries (ignoring the kit's BOS prefix), or None."""
    template = tokenizer.chat_template or ""
    body = template[len(_BOS_PREFIX) :] if template.startswith(_BOS_PREFIX) else template
    for name, jinja in CHAT_TEMPLATES.items():
        if body == jinja:
            return name
    for name, path in trl_templates().items():
        if template == path.read_text(encoding="utf-8"):
            return name
    return None


def template_hash(tokenizer) -> str | None:
    """sha256 (first 16 hex digits) of a chat template: the tokenizer's, or a template text; None without one."""
    template = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def describe_template(tokenizer) -> str:
    """How errors name a template: its kit/TRL name, else the tokenizer's own with its hash."""
    name = template_name(tokenizer)
    return f"'{name}'" if name else f"the tokenizer's own (sha256 {template_hash(tokenizer)})"


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
