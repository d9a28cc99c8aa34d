"""VLLMBackend against a fake engine that keeps vLLM's own rules, and the HF backend beside it.

The fake (`FakeLLM`) was written from vLLM 0.30.0's source (the wheel unpacked, not installed):
`vllm/v1/engine/input_processor.py` `_validate_prompt_len` (an empty prompt, or one of `max_model_len` tokens or
more, is refused for a generative model: prompt plus one output token must fit), `vllm/sampling_params.py`
(fields and defaults; `logprob_token_ids` at most 128 ids inside the vocabulary), `vllm/v1/sample/sampler.py`
(`logprob_token_ids`: raw log-softmax of the next token's logits at those ids, plus the sampled token) and
`vllm/outputs.py` / `vllm/logprobs.py` (`RequestOutput.prompt_logprobs`: None for the first prompt token, then
`{token_id: Logprob}`; `CompletionOutput.logprobs`: one such dict per generated token). Its numbers come from
the tiny HF model, so the adapter's arithmetic is checked against the HF backend's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import torch

from tulu_kit.evals import core
from tulu_kit.evals.backends import GenParams, HFBackend, VLLMBackend, load_backend

MAX_LOGPROB_TOKEN_IDS = 128  # vllm/sampling_params.py


class VLLMValidationError(Exception):
    """vllm.exceptions.VLLMValidationError (a VLLMClientError, not a ValueError)."""


@dataclasses.dataclass
class FakeSamplingParams:
    """The vllm.SamplingParams fields the adapter may set, with vLLM 0.30's defaults; others are a TypeError."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logprob_token_ids: list[int] | None = None
    detokenize: bool = True


@dataclasses.dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool = True


class FakeLLM:
    """Quacks like vllm.LLM (0.30): greedy text and log-probs from the tiny HF model, vLLM's length rule."""

    def __init__(self, model, tokenizer, max_model_len: int):
        self.model, self.tokenizer, self.max_model_len = model, tokenizer, max_model_len
        self.calls: list[tuple[int, FakeSamplingParams]] = []  # (number of prompts, params) per generate()
        self.decoded = 0  # prompt tokens detokenized for prompt_logprobs
        self.prompt_lengths: list[list[int]] = []

    def get_tokenizer(self):
        return self.tokenizer

    def _validate_prompt_len(self, n: int) -> None:  # input_processor.py, decoder prompt, runner "generate"
        if n == 0:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        if n > self.max_model_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {n}) is longer than the maximum model length of "
                f"{self.max_model_len}."
            )
        if n == self.max_model_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {n}) plus the number of requested output tokens (at least 1) "
                f"is longer than the maximum model length of {self.max_model_len}."
            )

    def _check_params(self, sp: FakeSamplingParams) -> None:
        ids = sp.logprob_token_ids
        if ids is not None and (
            len(ids) > MAX_LOGPROB_TOKEN_IDS or not all(0 <= t < len(self.tokenizer) for t in ids)
        ):
            raise VLLMValidationError(f"bad logprob_token_ids {ids}")

    @torch.no_grad()
    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        return torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)

    def generate(self, prompts, sampling_params, *, use_tqdm=True):
        assert isinstance(sampling_params, FakeSamplingParams)
        self._check_params(sampling_params)
        for p in prompts:  # one bad prompt fails the whole call, as in LLM._validate_and_add_requests
            self._validate_prompt_len(len(p["prompt_token_ids"]))
        self.calls.append((len(prompts), sampling_params))
        self.prompt_lengths.append([len(p["prompt_token_ids"]) for p in prompts])
        return [
            self._one(str(i), list(p["prompt_token_ids"]), sampling_params) for i, p in enumerate(prompts)
        ]

    def _one(self, rid: str, ids: list[int], sp: FakeSamplingParams) -> RequestOutput:
        lp = self._logprobs(ids)
        plp = None
        if sp.prompt_logprobs is not None:
            plp = [None]
            for i in range(1, len(ids)):
                tok = self.tokenizer.decode([ids[i]]) if sp.detokenize else None
                self.decoded += sp.detokenize
                plp.append({ids[i]: Logprob(lp[i - 1, ids[i]].item(), decoded_token=tok)})
        new: list[int] = []
        sample_lp = [] if (sp.logprobs is not None or sp.logprob_token_ids) else None
        budget = min(sp.max_tokens, self.max_model_len - len(ids))  # stops at max_model_len ("length")
        while len(new) < budget:
            nxt = int(lp[-1].argmax())
            if sample_lp is not None:
                sample_lp.append(
                    {nxt: Logprob(lp[-1, nxt].item())}
                    | {t: Logprob(lp[-1, t].item()) for t in sp.logprob_token_ids or []}
                )
            new.append(nxt)
            if nxt == self.tokenizer.eos_token_id:
                break
            lp = self._logprobs(ids + new)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in sp.stop or []:
            text = text.split(s)[0]
        out = CompletionOutput(0, text, new, None, sample_lp, "length")
        return RequestOutput(rid, None, ids, plp, [out])


CONTEXT = 32  # a short context, so the limit is easy to reach


@pytest.fixture(scope="module")
def hf(tiny_model):
    return HFBackend.load(str(tiny_model), batch_size=4)


@pytest.fixture(scope="module")
def short(hf):
    """HF backend and vLLM adapter over the same tiny model, both with a context of CONTEXT tokens."""
    hf_short = HFBackend(hf.model, hf.tokenizer, batch_size=4, max_model_len=CONTEXT)
    engine = FakeLLM(hf.model, hf.tokenizer, CONTEXT)
    return hf_short, VLLMBackend(engine, FakeSamplingParams, CONTEXT), engine


LONG = " ".join(f"word{i}" for i in range(40))  # far more than CONTEXT tokens


def test_fake_engine_refuses_a_prompt_of_max_model_len_tokens(short):
    _, _, engine = short
    sp = FakeSamplingParams(max_tokens=1, prompt_logprobs=0)
    engine.generate([{"prompt_token_ids": [5] * (CONTEXT - 1)}], sp)
    for n in (0, CONTEXT, CONTEXT + 1):
        with pytest.raises(VLLMValidationError):
            engine.generate([{"prompt_token_ids": [5] * (CONTEXT - 1)}, {"prompt_token_ids": [5] * n}], sp)


def test_context_limit_scores_instead_of_failing_and_matches_hf(short):
    hf_short, vb, engine = short
    reqs = [
        (LONG, " the end"),
        ("Question: hi", " there friend"),
        ("x", LONG),
    ]  # long context, long continuation
    v, h = vb.loglikelihood(reqs), hf_short.loglikelihood(reqs)
    assert [n for _, n in v] == [n for _, n in h]
    assert [s for s, _ in v] == pytest.approx([s for s, _ in h], abs=1e-5)
    # what is scored: the last CONTEXT - 1 tokens of context + continuation, the continuation whole if it fits
    ctx, cont = hf_short.encode_pair(*reqs[0])
    seq = (ctx + cont)[-(CONTEXT - 1) :]
    lp = engine._logprobs(seq)
    manual = sum(lp[i - 1, seq[i]].item() for i in range(len(seq) - len(cont), len(seq)))
    assert v[0] == (pytest.approx(manual, abs=1e-5), len(cont))
    assert v[2][1] == CONTEXT - 2  # a continuation longer than the context: its last tokens are scored
    choices = vb.choice_logprobs([LONG + "\nAnswer:"], list("ABCD"))
    assert choices == [
        pytest.approx(hf_short.choice_logprobs([LONG + "\nAnswer:"], list("ABCD"))[0], abs=1e-5)
    ]
    assert len(vb.generate([LONG], GenParams(max_new_tokens=4))) == 1
    assert engine.prompt_lengths[-1] == [CONTEXT - 4]  # room left for the 4 new tokens


def test_scores_equal_the_hf_backend(hf):
    engine = FakeLLM(hf.model, hf.tokenizer, 4096)
    vb = VLLMBackend(engine, FakeSamplingParams, 4096)
    reqs = [("Question: hi", " there friend"), ("a", "b c"), ("The answer is ", "B")]
    for (v, nv), (h, nh) in zip(vb.loglikelihood(reqs), hf.loglikelihood(reqs)):
        assert nv == nh and v == pytest.approx(h, abs=1e-5)
    prompts = ["Answer:", "Q: x\nAnswer:", "Q: y\nAnswer:"]
    got = vb.choice_logprobs(prompts, list("ABCD"))
    want = hf.choice_logprobs(prompts, list("ABCD"))
    assert all(g == pytest.approx(w, abs=1e-5) for g, w in zip(got, want)) and got[0] != got[1]
    # MMLU: one request per question (not one per choice), and no prompt token detokenized
    n_prompts, sp = engine.calls[-1]
    assert n_prompts == len(prompts) and sp.detokenize is False and sp.prompt_logprobs is None
    assert engine.decoded == 0


def test_generate_keeps_order_and_cuts_at_stop_strings(hf):
    engine = FakeLLM(hf.model, hf.tokenizer, 4096)
    vb = VLLMBackend(engine, FakeSamplingParams, 4096)
    prompts = ["Hello", "The capital of France is a city that", "x y z"]
    free = vb.generate(prompts, GenParams(max_new_tokens=12))
    assert free == [vb.generate([p], GenParams(max_new_tokens=12))[0] for p in prompts]
    assert len(set(free)) > 1
    stop = next(ch for ch in free[1][2:] if ch.strip())
    cut = vb.generate(prompts[1:2], GenParams(max_new_tokens=12, stop=(stop,)))[0]
    assert stop not in cut and free[1].startswith(cut) and len(cut) < len(free[1])


@pytest.fixture(scope="module")
def no_bos(tiny_model, hf):
    """The tiny tokenizer made to behave like one without BOS (Qwen-style): "" encodes to no tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model), add_bos_token=False)
    tok.bos_token = None
    assert tok("")["input_ids"] == [] and tok.bos_token_id is None
    hf_nb = HFBackend(hf.model, tok, batch_size=4)
    return hf_nb, VLLMBackend(FakeLLM(hf.model, tok, 4096), FakeSamplingParams, 4096)


def test_empty_context_is_scored_after_eos_in_both_backends(no_bos):
    hf_nb, vb = no_bos
    eos = hf_nb.tokenizer.eos_token_id
    reqs = [("", "hello world"), ("a", " b")]
    cont = hf_nb.tokenizer("hello world")["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(hf_nb.model(torch.tensor([[eos] + cont])).logits[0].float(), -1)
    manual = sum(lp[i, t].item() for i, t in enumerate(cont))
    h, v = hf_nb.loglikelihood(reqs), vb.loglikelihood(reqs)
    assert h[0] == (pytest.approx(manual, abs=1e-5), len(cont))  # before: read the last position's logits
    assert v[0][0] == pytest.approx(manual, abs=1e-5)  # before: prompt_logprobs[0] is None -> TypeError
    assert v[1][0] == pytest.approx(h[1][0], abs=1e-5)
    assert vb.choice_logprobs([""], list("AB")) == [pytest.approx(hf_nb.choice_logprobs([""], list("AB"))[0])]


def test_sampling_settings_are_the_same_in_both_backends(hf):
    vb = VLLMBackend(FakeLLM(hf.model, hf.tokenizer, 4096), FakeSamplingParams, 4096)
    params = GenParams(max_new_tokens=5, temperature=0.7, top_p=0.9, top_k=5, seed=3)
    kw, sp = HFBackend.sampling_kwargs(params), vb.sampling_params(params)
    assert (
        (kw["temperature"], kw["top_p"], kw["top_k"]) == (sp.temperature, sp.top_p, sp.top_k) == (0.7, 0.9, 5)
    )
    assert sp.seed == 3 and kw["do_sample"] and sp.max_tokens == 5
    # top_k=0 reaches transformers as 0 (off), not None, which would let its default of 50 apply
    default = GenParams(temperature=1.0)
    assert HFBackend.sampling_kwargs(default)["top_k"] == 0 == vb.sampling_params(default).top_k
    greedy = GenParams()
    assert HFBackend.sampling_kwargs(greedy)["do_sample"] is False and vb.sampling_params(greedy).seed is None


def test_hf_sampling_obeys_top_k_and_seed(hf):
    prompts = ["Hello", "x y z"]
    greedy = hf.generate(prompts, GenParams(max_new_tokens=8))
    top1 = hf.generate(prompts, GenParams(max_new_tokens=8, temperature=5.0, top_k=1, seed=1))
    assert top1 == greedy  # top_k reached generate(): at temperature 5 without it the text would wander
    hot = GenParams(max_new_tokens=8, temperature=5.0, seed=7)
    assert hf.generate(prompts, hot) == hf.generate(prompts, hot) != greedy  # seeded, and really sampled


def test_bad_sampling_and_engine_settings_name_the_field():
    for kw, name in [
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"temperature": -1.0}, "temperature"),
    ]:
        with pytest.raises(ValueError, match=name):
            GenParams(**kw)
    for kw, name in [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"max_model_len": 0}, "max_model_len"),
    ]:
        with pytest.raises(ValueError, match=name):
            load_backend("no/such/model", "vllm", **kw)  # refused before any loading


def test_engine_settings_reach_vllm_llm(monkeypatch, tiny_model, hf):
    """EvalConfig -> open_backend -> vllm.LLM(...) keywords; the auto-fitted context is read back."""
    seen = {}

    class LLM(FakeLLM):
        def __init__(self, model, **kwargs):
            seen.update(model=model, **kwargs)
            super().__init__(hf.model, hf.tokenizer, 2048)
            cfg = types.SimpleNamespace(max_model_len=2048)  # what auto-fit left after the KV cache
            self.llm_engine = types.SimpleNamespace(model_config=cfg, engine_core=self)
            self.shut = 0

        def shutdown(self):
            self.shut += 1

    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=FakeSamplingParams)
    )
    cfg = core.EvalConfig(
        model=str(tiny_model), backend="vllm", seed=5, gpu_memory_utilization=0.5, tensor_parallel_size=2
    )
    be = core.open_backend(cfg)
    assert seen == dict(
        model=str(tiny_model),
        dtype="auto",
        max_model_len=-1,
        gpu_memory_utilization=0.5,
        tensor_parallel_size=2,
        seed=5,
    )
    assert isinstance(be, VLLMBackend) and be.max_length == 2048 and be.prompt_limit == 2047
    engine = be.engine
    be.close()
    assert engine.shut == 1 and be.engine is None


def test_metrics_json_records_sampling_and_engine_settings(tiny_model, hf, tmp_path):
    from tulu_kit.evals import gsm8k

    seen = []

    class Spy(HFBackend):
        def generate(self, prompts, params):
            seen.append(params)
            return super().generate(prompts, params)

    spy = Spy(hf.model, hf.tokenizer, batch_size=4, max_model_len=512)
    cfg = gsm8k.GSM8KConfig(
        model=str(tiny_model),
        data_dir="demo",
        max_examples=2,
        max_new_tokens=4,
        out_dir=str(tmp_path),
        temperature=0.6,
        top_p=0.8,
        top_k=20,
        seed=11,
        max_model_len=512,
    )
    gsm8k.run(cfg, backend=spy)
    assert {(p.temperature, p.top_p, p.top_k, p.seed) for p in seen} == {(0.6, 0.8, 20, 11)}
    recorded = json.loads((tmp_path / "metrics.json").read_text())["config"]
    want = dict(temperature=0.6, top_p=0.8, top_k=20, seed=11, max_model_len=512)
    want.update(gpu_memory_utilization=0.9, tensor_parallel_size=1)
    assert {k: recorded[k] for k in want} == want


def test_predict_frees_a_backend_it_opened(monkeypatch, tmp_path):
    class Closable:
        tokenizer = None
        closed = 0

        def close(self):
            Closable.closed += 1

    monkeypatch.setattr(core, "open_backend", lambda cfg: Closable())
    cfg = core.EvalConfig(model="m", out_dir=str(tmp_path / "a"))
    examples = [{"id": "1"}, {"id": "2"}]
    core.predict(cfg, examples, lambda be, chunk: [{"id": e["id"]} for e in chunk])
    assert Closable.closed == 1
    given = Closable()
    core.predict(dataclasses.replace(cfg, out_dir=str(tmp_path / "b")), examples, lambda be, c: c, given)
    assert Closable.closed == 1  # a backend the caller passed in stays open


def test_cli_eval_flags_reach_the_config(tiny_model, tmp_path):
    from tulu_kit.cli import main

    out = tmp_path / "cli"
    args = ["eval", "gsm8k", "--model", str(tiny_model), "--data-dir", "demo", "--max-examples", "1"]
    args += ["--max-new-tokens", "2", "--out", str(out), "--top-k", "7", "--max-model-len", "256"]
    args += ["--gpu-memory-utilization", "0.5", "--tensor-parallel-size", "2", "--seed", "3"]
    assert main(args) == 0
    recorded = json.loads((out / "metrics.json").read_text())["config"]
    assert (recorded["top_k"], recorded["max_model_len"], recorded["seed"]) == (7, 256, 3)
    assert (recorded["gpu_memory_utilization"], recorded["tensor_parallel_size"]) == (0.5, 2)
    assert (recorded["temperature"], recorded["top_p"]) == (0.0, 1.0)  # unset: the benchmark's (greedy)
