"""The tiny offline default: a Llama and a byte-level BPE tokenizer, deterministic, loadable by path."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tulu_kit.models import build_tiny_model, load_model, load_tokenizer, resolve_attention


def _digest(path: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.is_file())).hexdigest()


def test_tiny_model_loads_by_path_with_auto_classes(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "llama" and model.config.hidden_size <= 128
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    assert (tiny_model / "model.safetensors").is_file()


def test_tokenizer_is_byte_level_lossless_and_adds_one_bos(tiny_model):
    tok = load_tokenizer(tiny_model)
    text = "Ünïcode → 北京, tabs\tand  spaces\n<|user|>\n42!"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.tokenize("<|assistant|>\n")[0] == "<|assistant|>"  # chat markers are single tokens


def test_chat_template_is_tulu_with_generation_marks(tiny_model):
    tok = load_tokenizer(tiny_model)
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
        {"role": "assistant", "content": "A2"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert (
        text == "<s><|system|>\nS\n<|user|>\nU1\n<|assistant|>\nA1</s>\n<|user|>\nU2\n<|assistant|>\nA2</s>"
    )
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|system|>\nS\n<|user|>\nU1\n<|assistant|>\n"
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert enc["input_ids"].count(tok.bos_token_id) == 1  # the template's BOS, none added on top
    trained = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(trained) == "A1</s>A2</s>"


def test_build_is_deterministic_under_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=1)
    b = build_tiny_model(tmp_path / "b", seed=1)
    c = build_tiny_model(tmp_path / "c", seed=2)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_forward_and_generate(tiny_model):
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    batch = tok(["hello", "a longer prompt here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape
    by_hand = torch.nn.functional.cross_entropy(  # next-token CE over every position (pads included: labels=ids)
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1)
    )
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(math.log(len(tok)), abs=0.1)  # untrained: near-uniform over V
    prompt = tok("hi", return_tensors="pt")
    gen = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 5
    assert torch.equal(gen, model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False))


def test_flash_attention_missing_is_a_clear_error():
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    assert resolve_attention("auto") == "sdpa"
    with pytest.raises(RuntimeError, match="needs the flash-attn package"):
        resolve_attention("flash_attention_2")
