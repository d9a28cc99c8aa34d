"""The quickstart stage: build the tiny offline model and show one chat-formatted generation (notebook 00).

Every later stage of ``recipes/quickstart.yaml`` loads this model by path from ``<out_dir>/model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tulu_kit.io import atomic_write_json
from tulu_kit.models import build_tiny_model, load_model, load_tokenizer


@dataclass
class QuickstartConfig:
    out_dir: str = "../runs/lab/quickstart"  # the model is written to <out_dir>/model
    seed: int = 42  # fixes the model's initial weights
    hidden_size: int = 64  # width of the tiny Llama (<= 128 keeps CPU runs fast)
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads (key/value heads: half of them)
    vocab_size: int = 1024  # BPE merges learned from the shipped corpus (+3 chat tokens)
    prompt: str = "What is the capital of France?"  # shown through the chat template
    max_new_tokens: int = 24  # length of the sample generation

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")


def run(cfg: QuickstartConfig) -> dict:
    """Build the tiny model, then greedily answer ``cfg.prompt`` through its chat template."""
    model_dir = build_tiny_model(
        Path(cfg.out_dir) / "model",
        seed=cfg.seed,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        vocab_size=cfg.vocab_size,
    )
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    messages = [{"role": "user", "content": cfg.prompt}]
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # the template already starts with BOS, so the tokenizer must not add another
    inputs = tokenizer(prompt_text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=cfg.max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    result = {
        "model_dir": str(model_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "prompt_text": prompt_text,
        "prompt_tokens": tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]),
        "reply": tokenizer.decode(new_tokens, skip_special_tokens=True),
    }
    atomic_write_json(Path(cfg.out_dir) / "summary.json", result)
    return result
