"""The first steps of recipes/one_gpu/olmo2_1b.yaml's SFT stage on one GPU, at OLMo 2 1B's shape (skipped without
CUDA; never run yet, on no GPU so far).

One command on a CUDA node (nothing is downloaded: the model is built from OLMo 2 1B's shape with random weights,
the data are long synthetic conversations, the tokenizer is the kit's tiny one, whose ids fit the vocabulary):

    TULU_KIT_GPU_REPORT=runs/one_gpu_sft.json python -m pytest tests/gpu/test_one_gpu_recipe_gpu.py -q -s

Checked: the recipe's SFT settings (bf16, gradient checkpointing, 2 sequences of up to 4,096 tokens per step)
train 3 optimizer steps with a finite loss; the model has the 1.48e9 parameters the header computes; the peak GPU
memory stays under the header's estimate of about 31 GB plus a 25% margin. The peak memory and seconds per
micro-batch go to the report file, to set the header's time estimate against.
`TULU_KIT_GPU_TEST_ON_CPU=1` runs the same path at a toy shape on the CPU (how this file was checked).
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch

from tulu_kit.config import REPO_ROOT, load_recipe
from tulu_kit.io import write_jsonl

ON_CPU = os.environ.get("TULU_KIT_GPU_TEST_ON_CPU") == "1"
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason="needs a CUDA GPU")

# OLMo-2-0425-1B's shape (the header's arithmetic); the CPU check uses a toy one
SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=100352, tie_word_embeddings=False, max_position_embeddings=4096)  # fmt: skip
if ON_CPU:
    SHAPE.update(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=2048)  # fmt: skip
HEADER_SFT_GB = 31.0


def _long_conversations(n: int, words: int) -> list[dict]:
    text = " ".join(f"step {i} adds {i % 7} to the total" for i in range(words // 6))
    return [{"messages": [{"role": "user", "content": f"Sum it up ({k}), step by step."},
                          {"role": "assistant", "content": f"The total is {k}. {text}"}]} for k in range(n)]  # fmt: skip


def test_olmo2_1b_sft_first_steps_fit_the_header(tmp_path):
    from transformers import AutoModelForCausalLM, Olmo2Config

    from tulu_kit import sft
    from tulu_kit.models import build_tiny_tokenizer

    model_dir = tmp_path / "olmo2-1b-shape"
    tokenizer = build_tiny_tokenizer()
    config = Olmo2Config(**SHAPE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    if not ON_CPU:
        assert math.isclose(n_params, 1.485e9, rel_tol=0.01), n_params  # the header's N
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    data = write_jsonl(tmp_path / "long.jsonl", _long_conversations(16, 1500 if ON_CPU else 3000))
    sets = [f"sft.model={model_dir}", f"sft.train_file={data}", "sft.max_steps=3", "sft.gradient_accumulation_steps=2",
            "sft.launcher=none", "sft.save_steps=0", "sft.report_to=none", "sft.logging_steps=1"]  # fmt: skip
    if ON_CPU:
        sets += ["sft.bf16=false", "sft.max_length=512"]
    recipe = load_recipe(REPO_ROOT / "recipes" / "one_gpu" / "olmo2_1b.yaml", sets, run_dir=tmp_path / "run")
    cfg = next(s for s in recipe.stages if s.name == "sft").config
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = sft.run(cfg)
    seconds = time.perf_counter() - start
    assert result["train_steps"] == 3 and math.isfinite(result["last_loss"])
    report = {"parameters": n_params, "seconds_total": seconds, "micro_batches": 6, "shape": SHAPE}
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 1e9
        report.update(peak_gb=peak, gpu=torch.cuda.get_device_name())
        assert peak < HEADER_SFT_GB * 1.25, f"peak {peak:.1f} GB vs the header's {HEADER_SFT_GB} GB"
    print(json.dumps(report, indent=2))
    if os.environ.get("TULU_KIT_GPU_REPORT"):
        from tulu_kit.io import atomic_write_json

        atomic_write_json(os.environ["TULU_KIT_GPU_REPORT"], report)
