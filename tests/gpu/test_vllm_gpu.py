"""The vLLM backend on a real GPU, beside the HF backend (skipped without CUDA or without vLLM).

One command on a CUDA node, after `pip install -c constraints.txt -e ".[vllm,dev]"`:

    TULU_KIT_GPU_REPORT=runs/vllm_gpu.json python -m pytest tests/gpu/test_vllm_gpu.py -q -s

Model: `TULU_KIT_GPU_MODEL` (a local model folder, e.g. Llama-3.1-Tulu-3-8B; then set
`TULU_KIT_GPU_MAX_MODEL_LEN=4096`, since the HF side scores a prompt of the full context), else a tiny Llama built
offline (hidden 256, head dim 64, 4,096 positions; vLLM fits `max_model_len=-1` to memory, here the model's own).

Checked: outputs come back in prompt order and stop strings cut them; `prompt_logprobs` scores every prompt token
(also one the model ranks far below the top) and `logprob_token_ids` gives exactly the requested ids; bf16
log-likelihood and choice scores equal the HF backend's within TOL_TOKEN nats per scored token + TOL_BASE; a prompt
of `max_model_len` tokens is refused by the engine, and the backend scores a longer one instead of failing; seeded
sampling repeats and another seed differs; GPU memory is back after the backend predict() opened is closed (before
judges load). Figures (differences, throughput vLLM vs HF `generate` on the same prompts) go to the report file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
import torch

from tulu_kit.evals import core
from tulu_kit.evals.backends import GenParams, HFBackend, VLLMBackend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (and the vllm extra)")

TOL_TOKEN = 0.02  # nats per scored token, bf16 (different kernels and reduction orders in the two backends)
TOL_BASE = 0.02
GPU_FRACTION = 0.4  # of the GPU for the vLLM engine, so the HF model fits beside it
MAX_MODEL_LEN = int(os.environ.get("TULU_KIT_GPU_MAX_MODEL_LEN", "-1"))
REPORT: dict = {}


def _record(**kw) -> None:
    REPORT.update(kw)
    print(json.dumps(kw))
    path = os.environ.get("TULU_KIT_GPU_REPORT")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(REPORT, f, indent=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    if os.environ.get("TULU_KIT_GPU_MODEL"):
        return os.environ["TULU_KIT_GPU_MODEL"]
    from tulu_kit.models import build_tiny_model

    return str(
        build_tiny_model(tmp_path_factory.mktemp("gpu") / "model", seed=0, hidden_size=256, num_heads=4)
    )


@pytest.fixture(scope="module")
def hf(model_dir) -> HFBackend:
    return HFBackend.load(
        model_dir, dtype="bfloat16", device="cuda", batch_size=16, max_model_len=MAX_MODEL_LEN
    )


@pytest.fixture(scope="module")
def free_before(hf) -> int:
    """Free GPU memory with the HF model loaded and no vLLM engine."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


@pytest.fixture(scope="module")
def vb(model_dir, free_before):
    pytest.importorskip("vllm")
    be = VLLMBackend.load(
        model_dir,
        dtype="bfloat16",
        max_model_len=MAX_MODEL_LEN,
        gpu_memory_utilization=GPU_FRACTION,
        seed=0,
        enforce_eager=True,  # skip CUDA-graph capture: a faster start, the same numbers
    )
    _record(max_model_len=be.max_length, model=model_dir)
    yield be
    be.close()


def _tol(n_tokens: int) -> float:
    return TOL_TOKEN * n_tokens + TOL_BASE


PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Hello, my name is",
    "The quick brown fox",
    "1, 2, 3, 4,",
    "def add(a, b):\n    return",
    "Once upon a time",
]
REQUESTS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("The quick brown fox", " jumps over the lazy dog"),
    ("", "hello world"),  # an empty context is scored after BOS
    ("a", "b c d e f g"),
    ("The answer is ", "B"),
]


def test_outputs_come_back_in_prompt_order_and_stop_strings_cut(vb):
    from vllm import SamplingParams

    encoded = [vb.encode(p) for p in PROMPTS]
    outs = vb._run(encoded, SamplingParams(max_tokens=4, temperature=0.0))
    assert [list(o.prompt_token_ids) for o in outs] == encoded
    free = vb.generate(PROMPTS[:1], GenParams(max_new_tokens=24))[0]
    stop = next((ch for ch in free[2:] if ch.strip()), None)
    if stop is None:
        pytest.skip(f"the model's output {free!r} has no character to stop at")
    cut = vb.generate(PROMPTS[:1], GenParams(max_new_tokens=24, stop=(stop,)))[0]
    assert stop not in cut and free.startswith(cut) and len(cut) < len(free)


def test_prompt_logprobs_score_every_token_and_logprob_token_ids_exactly_those(vb):
    from vllm import SamplingParams

    ids = vb.encode("The quick brown fox jumps over the lazy dog, then sleeps.")
    sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    plp = vb._run([ids], sp)[0].prompt_logprobs
    assert plp[0] is None and len(plp) == len(ids)
    assert all(ids[i] in plp[i] for i in range(1, len(ids)))
    ranks = [plp[i][ids[i]].rank for i in range(1, len(ids))]
    assert max(ranks) > 1  # a token outside the top-1 (top-k = 0) is still scored
    vocab = len(vb.tokenizer)
    cand = [ids[1], 0, vocab // 2, vocab - 1]
    sp = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=cand, detokenize=False)
    row = vb._run([ids[:1]], sp)[0].outputs[0].logprobs[0]
    assert set(cand) <= set(row) and all(row[c].logprob <= 0 for c in cand)
    assert row[ids[1]].logprob == pytest.approx(plp[1][ids[1]].logprob, abs=1e-3)  # both routes, one number
    _record(prompt_token_max_rank=max(ranks))


def test_loglikelihood_and_choices_equal_hf_in_bf16(vb, hf):
    v, h = vb.loglikelihood(REQUESTS), hf.loglikelihood(REQUESTS)
    diffs = [abs(a - b) for (a, _), (b, _) in zip(v, h)]
    assert [n for _, n in v] == [n for _, n in h]
    assert all(d <= _tol(n) for d, (_, n) in zip(diffs, v)), list(zip(diffs, v, h))
    prompts = [f"Q{i}: which letter?\nA. x\nB. y\nC. z\nD. w\nAnswer:" for i in range(16)] + PROMPTS
    vc, hc = vb.choice_logprobs(prompts, list("ABCD")), hf.choice_logprobs(prompts, list("ABCD"))
    cdiffs = [abs(a - b) for rv, rh in zip(vc, hc) for a, b in zip(rv, rh)]
    assert max(cdiffs) <= _tol(1)
    for rv, rh in zip(vc, hc):  # the chosen letter agrees wherever HF's margin exceeds the tolerance
        top = sorted(rh, reverse=True)
        if top[0] - top[1] > 2 * _tol(1):
            assert rv.index(max(rv)) == rh.index(max(rh))
    _record(
        loglikelihood_max_abs_diff=max(diffs),
        choice_max_abs_diff=max(cdiffs),
        tolerance=f"{TOL_TOKEN} nats per scored token + {TOL_BASE} (bf16)",
    )


def test_context_limit_is_scored_not_refused(vb, hf):
    from vllm import SamplingParams

    limit = vb.max_length
    hf_same = HFBackend(hf.model, hf.tokenizer, batch_size=4, max_model_len=limit)
    words, n = [], 0
    while n <= limit + 50:
        words += [f"word{len(words)}" for _ in range(200)]
        n = len(vb.encode(" ".join(words)))
    long = " ".join(words)
    with pytest.raises(Exception, match="maximum model length"):  # vLLM's own rule, at its real limit
        vb.engine.generate([{"prompt_token_ids": vb.encode(long)[:limit]}], SamplingParams(max_tokens=1))
    (v, nv), (h, nh) = (
        vb.loglikelihood([(long, " the end")])[0],
        hf_same.loglikelihood([(long, " the end")])[0],
    )
    assert nv == nh and abs(v - h) <= _tol(nv)
    vc = vb.choice_logprobs([long + "\nAnswer:"], list("ABCD"))[0]
    hc = hf_same.choice_logprobs([long + "\nAnswer:"], list("ABCD"))[0]
    assert max(abs(a - b) for a, b in zip(vc, hc)) <= _tol(1)
    assert len(vb.generate([long], GenParams(max_new_tokens=8))) == 1
    _record(context_limit_diff=abs(v - h), long_prompt_tokens=n)


def test_seeded_sampling_repeats(vb, hf):
    params = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=123)
    for be in (vb, hf):
        first = be.generate(PROMPTS, params)
        assert be.generate(PROMPTS, params) == first
        assert be.generate(PROMPTS, dataclasses.replace(params, seed=124)) != first


def test_throughput_vllm_vs_hf_generate(vb, hf):
    """Not a test of speed (no assertion on time): the figures for the report, same prompts, greedy."""
    prompts = [f"{p} ({i})" for i in range(32) for p in PROMPTS]  # 192 prompts
    params = GenParams(max_new_tokens=64)
    rates = {}
    for name, be in (("vllm", vb), ("hf", hf)):
        be.generate(prompts[:4], params)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = be.generate(prompts, params)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens = sum(len(hf.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outs)
        rates[name] = {"seconds": round(dt, 3), "prompts_per_s": round(len(prompts) / dt, 1),
                       "output_tokens_per_s": round(tokens / dt, 1)}  # fmt: skip
    greedy_same = sum(a == b for a, b in zip(vb.generate(PROMPTS, params), hf.generate(PROMPTS, params)))
    _record(
        throughput=rates,
        hf_batch_size=hf.batch_size,
        greedy_outputs_identical=f"{greedy_same}/{len(PROMPTS)}",
    )


def test_zz_gpu_memory_is_back_before_judges_load(vb, model_dir, free_before, tmp_path):
    """Runs last: close the shared engine, then let predict() open and close one itself, as an eval does
    before its judges or classifier load."""
    vb.close()
    torch.cuda.empty_cache()
    after_close = torch.cuda.mem_get_info()[0]
    cfg = core.EvalConfig(
        model=model_dir,
        backend="vllm",
        out_dir=str(tmp_path / "eval"),
        gpu_memory_utilization=GPU_FRACTION,
        max_model_len=MAX_MODEL_LEN,
    )
    examples = [{"id": str(i), "text": p} for i, p in enumerate(PROMPTS)]
    preds = core.generate_predictions(
        cfg, examples, lambda e, chat: (e["text"], ""), GenParams(max_new_tokens=8)
    )
    assert len(preds) == len(PROMPTS)
    torch.cuda.empty_cache()
    after_predict = torch.cuda.mem_get_info()[0]
    gib = 2**30
    _record(free_gib_before=free_before / gib, free_gib_after_close=after_close / gib,
            free_gib_after_predict=after_predict / gib)  # fmt: skip
    slack = 2 * gib  # CUDA context, allocator caches
    assert after_close >= free_before - slack and after_predict >= free_before - slack
