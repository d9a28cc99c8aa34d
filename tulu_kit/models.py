"""Models and tokenizers: load by path like any Hub model, and build the tiny offline default.

The tiny default is a Llama-architecture causal LM (2 layers, hidden 64) with a byte-level BPE tokenizer trained
on ``assets/corpus.txt``, a few KB of text this project wrote. It is saved with ``save_pretrained``, so every
stage loads it by path exactly as it would load ``meta-llama/Llama-3.1-8B``. Used by notebook 00 and every stage.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path

import torch

from tulu_kit.data.templates import set_chat_template

logger = logging.getLogger(__name__)

CORPUS = Path(__file__).parent / "assets" / "corpus.txt"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
# LoRA targets of open-instruct finetune.py: every attention and MLP projection
TULU_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]  # plain added tokens: they survive decoding


# --------------------------------------------------------------------------- where a model comes from


_TRUE = ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (False at once under ``HF_HUB_OFFLINE=1``).

    Behind a proxy (``HTTPS_PROXY``) a direct connection says nothing, so the Hub counts as reachable there.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_model_source(name: str | Path) -> str:
    """Fail at once, in one line, when ``name`` cannot be loaded, before any work: a local folder must hold a
    checkpoint (``config.json``) or a tokenizer; a name that can only be a path must exist; a Hub id must be in
    the local cache or the Hub reachable (instead of a minute of retries, then a hundred lines). Returns ``name``.
    """
    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        if not any(
            (path / f).is_file() for f in ("config.json", "tokenizer_config.json", "adapter_config.json")
        ):
            raise FileNotFoundError(
                f"{text}: not a model folder (no config.json); is the stage that writes it done?"
            )
        return text
    if path.exists():
        raise FileNotFoundError(f"{text}: a file, not a model folder")
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        raise FileNotFoundError(f"{text}: no such model folder (looked from {Path.cwd()})")
    from huggingface_hub import try_to_load_from_cache

    cached = any(
        isinstance(try_to_load_from_cache(text, f), str) for f in ("config.json", "tokenizer_config.json")
    )
    if not cached and not hub_reachable():
        raise FileNotFoundError(
            f"{text}: not a local folder, and the Hub is unreachable (offline or HF_HUB_OFFLINE=1) with nothing cached; "
            "give a model folder, or download it once where there is a network (huggingface-cli download NAME)"
        )
    return text


def build_tiny_tokenizer(vocab_size: int = 1024, chat_template: str = "tulu"):
    """A byte-level BPE tokenizer trained on the shipped corpus; adds BOS on encode, like Llama-2's."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # one token per digit (as Llama 3 splits numbers into short runs): a sum is then learnable digit by digit,
    # where BPE merges of the corpus would give "47" one token and "48" two
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = CORPUS.read_text(encoding="utf-8")
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in CHAT_TOKENS])
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
            ),
        ]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=4096,
    )
    return set_chat_template(hf, chat_template)


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 1024,
) -> Path:
    """Build, deterministically under ``seed``, the tiny Llama and its tokenizer, saved to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(vocab_size)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny model: %d parameters, vocab %d -> %s", n_params, len(tokenizer), out_dir)
    return out_dir


def load_tokenizer(path: str | Path, padding_side: str | None = None):
    """Load a tokenizer by local path or Hub id; make sure it can pad."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(check_model_source(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side:
        tokenizer.padding_side = padding_side
    return tokenizer


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_attention(attn_implementation: str | None) -> str:
    """``flash_attention_2`` when asked for and installed, else ``sdpa``; a clear message when it is missing."""
    if attn_implementation in (None, "auto"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2" if torch.cuda.is_available() else "sdpa"
        except ImportError:
            return "sdpa"
    if attn_implementation == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "attn_implementation='flash_attention_2' needs the flash-attn package (GPU only): "
                "pip install 'tulu-kit[gpu]', or use 'sdpa' / 'auto'"
            ) from None
    return attn_implementation


def load_model(path: str | Path, dtype: str = "float32", attn_implementation: str | None = "auto"):
    """Load a causal LM by local path or Hub id with the given dtype and attention implementation."""
    if dtype not in _DTYPES and dtype != "auto":
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or 'auto', got {dtype!r}")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        check_model_source(path),
        dtype=_DTYPES.get(dtype, "auto"),
        attn_implementation=resolve_attention(attn_implementation),
    )


# --------------------------------------------------------------------------- LoRA / QLoRA (sft stage, notebook 03)
# LoRA: Hu et al. 2021, arXiv 2106.09685. QLoRA: Dettmers et al. 2023, arXiv 2305.14314 (NF4 base, double
# quantization, paged optimizers). Settings as open-instruct's finetune.py (`--use_lora`, `--use_qlora`).


def load_model_for_training(
    path: str | Path,
    dtype: str = "float32",
    attn_implementation: str | None = "auto",
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
):
    """Load a causal LM to train: plain (:func:`load_model`) or, for QLoRA, with a frozen 4-bit NF4 base."""
    if not load_in_4bit:
        return load_model(path, dtype=dtype, attn_implementation=attn_implementation)
    import os

    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(
        check_model_source(path),
        quantization_config=quantization_config_4bit(dtype),
        dtype=_DTYPES[dtype],
        attn_implementation=resolve_attention(attn_implementation),
        device_map=device_map,
    )
    # casts the unquantized layers (norms, embeddings) to fp32 and makes the inputs require grad
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def quantization_config_4bit(compute_dtype: str = "bfloat16"):
    """QLoRA's base: NF4 weights with double quantization, matmuls in ``compute_dtype`` (open-instruct's)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_DTYPES[compute_dtype],
    )


def lora_config(r: int = 64, alpha: int = 16, dropout: float = 0.1, target_modules: str = "all-linear"):
    """PEFT's LoraConfig for a causal LM; ``target_modules`` is "all-linear" or comma-separated module names."""
    from peft import LoraConfig, TaskType

    targets = target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in target_modules.split(",") if t.strip()]
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets
    )


def add_lora(model, r: int = 64, alpha: int = 16, dropout: float = 0.1, target_modules: str = "all-linear"):
    """Wrap ``model`` with trainable LoRA adapters (``W + alpha/r * B A``); only the adapters train."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(r, alpha, dropout, target_modules))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; a 4-bit weight stores two values per byte, counted as its real size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n = (
                int(getattr(p, "quant_state", None).shape.numel())
                if getattr(p, "quant_state", None)
                else n * 2
            )
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def training_memory_gb(total_params: int, trainable_params: int, weight_bits: int = 16) -> dict[str, float]:
    """Rough training memory without activations: weights + gradients + AdamW state (QLoRA paper, section 2).

    Frozen weights take ``weight_bits`` each (16 for bf16, 4 for QLoRA's NF4); trainable ones also need a bf16
    gradient and two fp32 Adam moments plus an fp32 master copy (16 bytes in all, mixed-precision AdamW).
    """
    frozen = total_params - trainable_params
    parts = {
        "weights": (frozen * weight_bits / 8 + trainable_params * 2) / 1e9,
        "gradients": trainable_params * 2 / 1e9,
        "optimizer": trainable_params * 12 / 1e9,
    }
    return {**parts, "total": sum(parts.values())}


# --------------------------------------------------------------------------- adapter merge (PEFT)
# Shared by every training stage with LoRA and by `tulu-kit merge lora`.

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _dequantize_nf4(model, dtype: torch.dtype):
    """Replace every bitsandbytes ``Linear4bit`` by a plain ``nn.Linear`` holding its dequantized weights.

    As open-instruct ``merge_lora.py --qlora``: the adapter was trained against the NF4-rounded base, so it
    is merged into exactly those weights, not into the original higher-precision ones. Call it on a freshly
    loaded model: bitsandbytes repacks CPU weights on the first eval-mode forward, after which they no longer
    dequantize with ``dequantize_4bit``.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
            linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            linear.weight = torch.nn.Parameter(weight, requires_grad=False)
            if module.bias is not None:
                linear.bias = torch.nn.Parameter(module.bias.data.to(dtype), requires_grad=False)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, linear.to(dtype))
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer, model.is_quantized, model.is_loaded_in_4bit = None, False, False
    return model


def _adapter_embedding_rows(adapter: Path) -> int:
    """Rows of an embedding the adapter saved in full (``modules_to_save``), else 0."""
    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        return 0
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        rows = [f.get_slice(k).get_shape()[0] for k in f.keys() if "embed_tokens" in k or "lm_head" in k]
    return max((r for r in rows), default=0)


def merge_lora(
    base: str | Path,
    adapter: str | Path,
    out_dir: str | Path,
    qlora: bool = False,
    pad_to_multiple_of: int | None = None,
    dtype: str = "float32",
    double_quant: bool = True,
    max_shard_size: str = "2GB",
) -> Path:
    """Merge a LoRA (with ``qlora``: QLoRA) adapter into its base; save a plain HF checkpoint and tokenizer.

    The tokenizer comes from the adapter folder when it has one (training may add tokens), else from the
    base; the base's embeddings grow to fit it first (open-instruct issue #190). ``pad_to_multiple_of`` then
    pads the embedding rows to a multiple (8 suits tensor cores). ``double_quant`` must match QLoRA training.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    adapter = Path(adapter)  # the base may be a Hub id
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: not a PEFT adapter (no adapter_config.json)")
    torch_dtype = getattr(torch, dtype)
    has_tok = any((adapter / f).is_file() for f in _TOKENIZER_FILES)
    tokenizer = load_tokenizer(adapter if has_tok else base)
    if qlora:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=torch_dtype,
        )
        model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=quant, dtype=torch_dtype)
        model = _dequantize_nf4(model, torch_dtype)
    else:
        model = load_model(base, dtype=dtype)
    rows = max(len(tokenizer), _adapter_embedding_rows(adapter))
    if rows > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if pad_to_multiple_of:
        model.resize_token_embeddings(
            model.get_input_embeddings().weight.shape[0], pad_to_multiple_of=pad_to_multiple_of
        )
    from tulu_kit.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
    logger.info("merged adapter %s into %s -> %s", adapter, base, out_dir)
    return Path(out_dir)


# --------------------------------------------------------------------------- quick checks of a saved model


@torch.no_grad()
def pad_batch(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one (batch, longest) tensor of ids, padded with ``pad_id`` on the right (or ``left``, for
    generation), and its attention mask (1 on tokens). The one padding helper of the kit's own loops."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[r, cols] = torch.tensor(s, dtype=torch.long)
        mask[r, cols] = 1
    return ids, mask


def response_logprobs(model, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log p(response | prompt) of tokenized pairs (``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    Returns (chosen, rejected, chosen lengths), one forward per sequence (no padding, so nothing to mask).
    """
    device = next(model.parameters()).device
    out = {"chosen": [], "rejected": []}
    for row in rows:
        for key in out:
            ids = torch.tensor([row["prompt_ids"] + row[f"{key}_ids"]], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            n = len(row[f"{key}_ids"])
            targets = ids[0, -n:]
            out[key].append(logp[-n:].gather(-1, targets[:, None]).sum().item())
    lengths = torch.tensor([len(r["chosen_ids"]) for r in rows], dtype=torch.float32)
    return torch.tensor(out["chosen"]), torch.tensor(out["rejected"]), lengths


def sample_replies(model_dir: str | Path, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy replies of a saved model to single-turn prompts, through its own chat template."""
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    replies = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
        inputs = tokenizer(
            text,
            return_tensors="pt",
            add_special_tokens=not (tokenizer.bos_token and text.startswith(tokenizer.bos_token)),
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        replies.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return replies
