"""The quickstart stage: build the tiny offline model, pretrain it briefly, show one generation (notebook 00).

Tulu starts from a pretrained base (Llama), not from random weights; so does the quickstart. The tiny Llama is
pretrained with the plain next-token loss on :func:`tulu_kit.data.synthetic.pretraining_corpus` (the toy world's
facts, sums and sentences as prose, plus the tokenizer's corpus) for ``pretrain_steps`` steps: no chat format and
no questions, so it knows the world but does not answer. Deterministic under ``seed``. Every later stage of
``recipes/quickstart.yaml`` loads the model by path from ``<out_dir>/model``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tulu_kit.data.synthetic import pretraining_corpus
from tulu_kit.io import atomic_dir, atomic_write_json
from tulu_kit.models import build_tiny_model, load_model, load_tokenizer


@dataclass
class QuickstartConfig:
    out_dir: str = "../runs/lab/quickstart"  # the model is written to <out_dir>/model
    seed: int = 42  # fixes the model's initial weights
    hidden_size: int = 64  # width of the tiny Llama (<= 128 keeps CPU runs fast)
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads (key/value heads: half of them)
    vocab_size: int = 1024  # BPE merges learned from the shipped corpus (+3 chat tokens)
    pretrain_steps: int = 300  # next-token steps on the plain-text corpus; 0 keeps the random weights
    pretrain_lr: float = 3e-3  # peak AdamW rate (linear warm-up over 10% of the steps, cosine decay)
    pretrain_batch_size: int = 16  # windows per step
    pretrain_seq_len: int = 64  # tokens per window
    prompt: str = "What is the capital of France?"  # shown through the chat template
    max_new_tokens: int = 24  # length of the sample generation

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pretrain_steps < 0 or self.pretrain_batch_size < 1 or self.pretrain_seq_len < 2:
            raise ValueError(
                "pretrain_steps must be >= 0, pretrain_batch_size >= 1 and pretrain_seq_len >= 2"
            )


def pretrain(
    model, tokenizer, text: str, steps: int, lr: float, batch_size: int, seq_len: int, seed: int
) -> list:
    """Next-token pretraining on ``text``: random windows of ``seq_len`` tokens, AdamW, warm-up then cosine decay.
    Returns the loss per step. Draws from its own generator, so the result depends on ``seed`` alone."""
    lines = tokenizer(text.splitlines(keepends=True), add_special_tokens=False)["input_ids"]  # line by line:
    ids = torch.tensor([i for line in lines for i in line])  # no warning about a text longer than the model
    if len(ids) <= seq_len:
        raise ValueError(f"pretraining text has {len(ids)} tokens, fewer than pretrain_seq_len {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / steps)),
    )
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=gen)
        batch = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(round(loss.item(), 4))
    model.eval()
    return losses


def run(cfg: QuickstartConfig) -> dict:
    """Build the tiny model, pretrain it on the toy world's plain text, then greedily answer ``cfg.prompt``
    through its chat template."""
    model_dir = Path(cfg.out_dir) / "model"
    with atomic_dir(model_dir) as tmp:  # the pretrained model, or none: never the random one under its name
        build_tiny_model(
            tmp,
            seed=cfg.seed,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            vocab_size=cfg.vocab_size,
        )
        tokenizer, model = load_tokenizer(tmp), load_model(tmp)
        losses = []
        if cfg.pretrain_steps:
            text = pretraining_corpus(cfg.seed)
            losses = pretrain(
                model, tokenizer, text, cfg.pretrain_steps, cfg.pretrain_lr, cfg.pretrain_batch_size,
                cfg.pretrain_seq_len, cfg.seed,
            )  # fmt: skip
            model.save_pretrained(tmp)
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
        "pretrain_losses": losses,
    }
    atomic_write_json(Path(cfg.out_dir) / "summary.json", result)
    return result
