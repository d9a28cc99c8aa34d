"""Inference backends for the eval suite: HF `generate` (batched, left padding) and a vLLM adapter.

Used by every `eval/<benchmark>.ipynb` through `tulu_kit.evals.core`. A backend does three things:

* `generate(prompts, params)`: greedy or sampled continuations, cut at the first stop string;
* `loglikelihood([(context, continuation), ...])`: sum of log p(continuation tokens | context), the scoring rule
  of lm-eval-harness and of TruthfulQA-MC;
* `choice_logprobs(prompts, choices)`: log p(next token = choice) over the full vocabulary, as open-instruct's
  MMLU does (`eval/mmlu/run_eval.py`, `get_next_word_predictions`).

Both backends cut prompts by one rule (`Backend.prompt_limit`): a prompt or scored sequence holds at most
`max_length - 1` tokens, because vLLM refuses a prompt of exactly `max_model_len` tokens for a generative model
(`InputProcessor._validate_prompt_len`: prompt plus at least one output token must fit). Sampling is explicit in
both: temperature, top-p, top-k (0 = off; transformers alone would keep its default of 50) and a seed.

The vLLM adapter takes an already-built engine so it can be tested against a fake one; vLLM is not installed on
the CPU machines this kit is tested on (`pip install 'tulu-kit[vllm]'` on a GPU node, see `eval/README.md`).
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenParams:
    """Decoding settings for one `generate` call."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling; 1 = off
    top_k: int = 0  # keep the k most likely tokens; 0 = off (vLLM's default; transformers' would be 50)
    stop: tuple[str, ...] = ()  # the output is cut before the first occurrence of any of these
    seed: int = 0  # fixes sampling when temperature > 0

    def __post_init__(self):
        check_sampling(self.temperature, self.top_p, self.top_k)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    """Reject sampling values that either backend would refuse or read differently, naming the field."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")


def cut_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """Return `text` up to (not including) the earliest stop string."""
    cut = len(text)
    for s in stop:
        i = text.find(s) if s else -1
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


class Backend:
    """Shared tokenization helpers; subclasses implement generate / loglikelihood / choice_logprobs."""

    tokenizer: Any
    max_length: int = 4096  # the context length: model's, or max_model_len (vLLM: after fitting it to memory)
    truncated: int = 0  # prompts / scored sequences cut from the left so far (recorded in the eval manifest)

    def runtime(self) -> dict:
        """What actually ran: dtype, device, attention implementation, context, truncations so far."""
        model = getattr(self, "model", None)
        cfg = getattr(model, "config", None)
        engine_cfg = getattr(getattr(getattr(self, "engine", None), "llm_engine", None), "model_config", None)
        dtype = getattr(model, "dtype", None) or getattr(engine_cfg, "dtype", None)
        return {
            "backend": type(self).__name__,
            "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
            "device": str(getattr(self, "device", "cuda" if engine_cfg is not None else None)),
            "attention": getattr(cfg, "_attn_implementation", None) if cfg is not None else None,
            "max_length": self.max_length,
            "truncated": self.truncated,
        }

    @property
    def prompt_limit(self) -> int:
        """Most tokens a prompt or a scored sequence may hold: one less than the context (vLLM's rule)."""
        return max(1, self.max_length - 1)

    def prefix_id(self) -> int:
        """The token an empty context is scored after: BOS, else EOS (lm-eval-harness `prefix_token_id`)."""
        for name in ("bos_token_id", "eos_token_id"):
            tid = getattr(self.tokenizer, name, None)
            if tid is not None:
                return tid
        raise ValueError(
            "an empty context needs a BOS or EOS token to be scored after; the tokenizer has neither"
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt. BOS is added once: not again when a chat template already wrote it."""
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Split tokens of context+continuation at the context boundary (lm-eval-harness `_encode_pair`)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        if whole[: len(ctx)] != ctx:  # a merge across the boundary: fall back to separate encodings
            cont = list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
            return ctx, cont
        cont = whole[len(ctx) :]
        if not cont:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        # a tokenizer without BOS encodes "" to no tokens: the first continuation token then needs a context
        # (HF would read the last position's logits, vLLM has no log-prob for the first prompt token)
        return ctx or [self.prefix_id()], cont

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a scoring prompt, never empty (see `prefix_id`)."""
        return self.encode(text) or [self.prefix_id()]

    def choice_token_ids(self, choices: list[str]) -> list[int]:
        """Id of the token a model emits for ' A' (the last id of encode(' ' + choice))."""
        return [self.tokenizer(" " + c, add_special_tokens=False)["input_ids"][-1] for c in choices]

    def truncate_left(self, ids: list[int], room: int) -> list[int]:
        """Keep the last tokens that leave `room` tokens of context (the question ends a few-shot prompt)."""
        keep = max(1, min(self.prompt_limit, self.max_length - room))
        if len(ids) > keep:
            self.truncated += 1
            log.warning("prompt of %d tokens truncated to the last %d", len(ids), keep)
            return ids[-keep:]
        return ids

    def fit_pair(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """Cut context+continuation to `prompt_limit` tokens from the left, as lm-eval-harness does.

        A continuation longer than the limit keeps its last tokens; its first kept token is then context only.
        """
        limit = self.prompt_limit
        if len(ctx) + len(cont) <= limit:
            return ctx, cont
        self.truncated += 1
        if len(cont) < limit:
            log.warning("context of %d tokens truncated to the last %d", len(ctx), limit - len(cont))
            return ctx[len(ctx) + len(cont) - limit :], cont
        log.warning("continuation of %d tokens: only its last %d are scored", len(cont), limit - 1)
        cut = len(cont) - limit
        return cont[cut : cut + 1], cont[cut + 1 :]

    def close(self) -> None:
        """Free the model's memory (GPU included), so judges or another model can load after generation."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, prompts: list[str], params: GenParams) -> list[str]:
        raise NotImplementedError

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, int]]:
        raise NotImplementedError

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        raise NotImplementedError


class _StopOnStrings(StoppingCriteria):
    """Marks a row finished once its generated text contains a stop string (checks a short token tail)."""

    def __init__(self, stop: tuple[str, ...], tokenizer: Any, prompt_len: int):
        self.stop, self.tokenizer, self.prompt_len = stop, tokenizer, prompt_len
        self.tail = max(len(s) for s in stop) + 8

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :]
        tails = self.tokenizer.batch_decode(new[:, -self.tail :], skip_special_tokens=True)
        done = [any(s in t for s in self.stop) for t in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class HFBackend(Backend):
    """transformers backend: batched generation with left padding, batched log-likelihood scoring."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_model_len: int = -1):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.device = next(model.parameters()).device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        own = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_length = max_model_len if max_model_len > 0 else own

    @classmethod
    def load(
        cls,
        path: str,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        max_model_len: int = -1,
    ) -> HFBackend:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tulu_kit.models import check_model_source

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = AutoTokenizer.from_pretrained(check_model_source(path))  # offline Hub id: one line, at once
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_resolve_dtype(dtype, device)).to(device)
        return cls(model, tok, batch_size=batch_size, max_model_len=max_model_len)

    _dropped = 0  # bytes of the small CPU models dropped since the last full collection, in this process

    def close(self) -> None:
        """Drop the model. On a GPU, or once the models dropped since the last one add up to a GiB, also a full
        garbage collection at once: reference cycles among a model's modules would otherwise hold its memory
        until Python's next one. Small CPU models are otherwise left to Python, since a full collection costs
        ~0.5 s once transformers is imported (8 s of the quickstart report's 58, which loads 18 models)."""
        model, self.model = self.model, None
        if model is None:
            return
        HFBackend._dropped += sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        if self.device.type != "cpu" or HFBackend._dropped >= 2**30:
            HFBackend._dropped = 0
            super().close()

    def _batches(self, lengths: list[int], desc: str):
        """Index batches, longest first, so each batch pads little and an OOM shows up at once."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        bar = tqdm(total=len(order), desc=desc, disable=len(order) <= self.batch_size, leave=False)
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            yield chunk
            bar.update(len(chunk))
        bar.close()

    def _pad(self, seqs: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from tulu_kit.models import pad_batch

        ids, mask = pad_batch(seqs, self.pad_id, left=left)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: list[str], params: GenParams) -> list[str]:
        encoded = [self.truncate_left(self.encode(p), params.max_new_tokens) for p in prompts]
        out: list[str] = [""] * len(prompts)
        for chunk in self._batches([len(e) for e in encoded], "generate"):
            out_chunk = self._generate_batch([encoded[i] for i in chunk], params)
            for i, text in zip(chunk, out_chunk):
                out[i] = text
        return out

    @staticmethod
    def sampling_kwargs(params: GenParams) -> dict[str, Any]:
        """`generate` keywords for `params`: every sampling knob explicit, so neither transformers' defaults
        (top_k=50) nor the model's generation_config.json change what was asked for."""
        if params.temperature > 0:
            return {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
            }
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}

    def _generate_batch(self, seqs: list[list[int]], params: GenParams) -> list[str]:
        ids, mask = self._pad(seqs, left=True)
        if params.temperature > 0:
            torch.manual_seed(params.seed)
        criteria = StoppingCriteriaList(
            [_StopOnStrings(params.stop, self.tokenizer, ids.shape[1])] if params.stop else []
        )
        gen = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=params.max_new_tokens,
            stopping_criteria=criteria,
            pad_token_id=self.pad_id,
            **self.sampling_kwargs(params),
        )
        texts = []
        for r, seq in enumerate(seqs):
            new = gen[r, ids.shape[1] :].tolist()
            # decode prompt+output and drop the decoded prompt: keeps a leading space that decoding the
            # new tokens alone would lose with SentencePiece tokenizers (open-instruct eval/utils.py)
            prompt_text = self.tokenizer.decode(seq, skip_special_tokens=True)
            full = self.tokenizer.decode(seq + new, skip_special_tokens=True)
            texts.append(cut_at_stop(full[len(prompt_text) :], params.stop))
        return texts

    @torch.no_grad()
    def _logprobs(self, seqs: list[list[int]]) -> torch.Tensor:
        """log-softmax over the vocabulary for every position of right-padded `seqs` (float32)."""
        ids, mask = self._pad(seqs, left=False)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, int]]:
        pairs = [self.fit_pair(*self.encode_pair(ctx, cont)) for ctx, cont in requests]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
        for chunk in self._batches([len(c) + len(k) for c, k in pairs], "loglikelihood"):
            lp = self._logprobs([pairs[i][0] + pairs[i][1] for i in chunk])
            for r, i in enumerate(chunk):
                ctx, cont = pairs[i]
                pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=lp.device)
                tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
                out[i] = (float(lp[r, pos, tgt].sum()), len(cont))
        return out

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        cand = self.choice_token_ids(choices)
        encoded = [self.truncate_left(self.encode_prompt(p), 1) for p in prompts]
        out: list[list[float]] = [[] for _ in prompts]
        for chunk in self._batches([len(e) for e in encoded], "choice_logprobs"):
            lp = self._logprobs([encoded[i] for i in chunk])
            for r, i in enumerate(chunk):
                out[i] = lp[r, len(encoded[i]) - 1, cand].tolist()
        return out


class VLLMBackend(Backend):
    """vLLM adapter. `engine` is a `vllm.LLM` (or a fake with the same `generate` / `get_tokenizer`).

    Read against vLLM 0.30's source: prompts go in as token ids (`{"prompt_token_ids": [...]}`), log-likelihoods
    come from `prompt_logprobs=0` (the log-prob of each prompt token, None for the first), choice scores from
    one request per prompt with `max_tokens=1, logprob_token_ids=[...]` (raw log-softmax of the next token's
    logits at exactly those ids). Scoring requests set `detokenize=False`: no prompt token is decoded.
    """

    def __init__(self, engine: Any, sampling_params_cls: Any, max_length: int = 4096):
        self.engine, self.SamplingParams = engine, sampling_params_cls
        self.tokenizer = engine.get_tokenizer()
        self.max_length = max_length

    @classmethod
    def load(
        cls,
        path: str,
        dtype: str = "auto",
        max_model_len: int = -1,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> VLLMBackend:
        """Start `vllm.LLM` for `path`; `max_model_len=-1` lets vLLM fit the context to the KV-cache memory."""
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise ImportError(
                "backend 'vllm' needs vLLM (GPU): pip install 'tulu-kit[vllm]'; on CPU use --backend hf"
            ) from e
        engine = LLM(  # pragma: no cover
            model=path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            **engine_kwargs,
        )
        max_len = engine.llm_engine.model_config.max_model_len  # pragma: no cover - after auto-fit
        log.info("vLLM engine for %s: max_model_len %d", path, max_len)  # pragma: no cover
        return cls(engine, SamplingParams, max_len)  # pragma: no cover

    def close(self) -> None:
        """Stop the engine process(es) and free their GPU memory."""
        core = getattr(getattr(self.engine, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.engine = None
        super().close()

    def _run(self, token_lists: list[list[int]], sp: Any) -> list[Any]:
        too_long = [len(ids) for ids in token_lists if not 0 < len(ids) <= self.prompt_limit]
        if too_long:  # truncation should have prevented it; vLLM would fail the whole batch
            raise ValueError(f"prompt of {too_long[0]} tokens: vLLM takes 1..{self.prompt_limit}")
        prompts = [{"prompt_token_ids": ids} for ids in token_lists]
        return self.engine.generate(prompts, sp, use_tqdm=False)

    def sampling_params(self, params: GenParams) -> Any:
        """vLLM `SamplingParams` for `params`, the same knobs `HFBackend.sampling_kwargs` sets."""
        sampling = params.temperature > 0
        return self.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p if sampling else 1.0,
            top_k=params.top_k if sampling else 0,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=params.seed if sampling else None,
        )

    def generate(self, prompts: list[str], params: GenParams) -> list[str]:
        encoded = [self.truncate_left(self.encode(p), params.max_new_tokens) for p in prompts]
        outs = self._run(encoded, self.sampling_params(params))
        return [cut_at_stop(o.outputs[0].text, params.stop) for o in outs]

    def _sum_prompt_logprobs(self, seqs: list[list[int]], starts: list[int]) -> list[float]:
        """Sum of log p(token_i | tokens_<i) for i >= start, read from vLLM's `prompt_logprobs`."""
        sp = self.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        sums = []
        for seq, start, out in zip(seqs, starts, self._run(seqs, sp)):
            sums.append(sum(out.prompt_logprobs[i][seq[i]].logprob for i in range(max(start, 1), len(seq))))
        return sums

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, int]]:
        pairs = [self.fit_pair(*self.encode_pair(c, k)) for c, k in requests]
        sums = self._sum_prompt_logprobs([c + k for c, k in pairs], [len(c) for c, _ in pairs])
        return [(s, len(k)) for s, (_, k) in zip(sums, pairs)]

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        cand = self.choice_token_ids(choices)
        encoded = [self.truncate_left(self.encode_prompt(p), 1) for p in prompts]
        sp = self.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=cand, detokenize=False)
        return [[o.outputs[0].logprobs[0][c].logprob for c in cand] for o in self._run(encoded, sp)]


def load_backend(
    model: str | Path,
    backend: str = "hf",
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int = 8,
    max_model_len: int = -1,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    seed: int = 0,
) -> Backend:
    """Build the backend named `backend` for the model folder (or Hub id) `model`.

    `max_model_len` caps the context in both backends (-1: the model's own; vLLM: the longest that fits in
    `gpu_memory_utilization` of each GPU); the other engine settings are vLLM's.
    """
    if max_model_len == 0 or max_model_len < -1:
        raise ValueError(
            f"max_model_len must be -1 (auto) or a positive number of tokens, got {max_model_len}"
        )
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if backend == "hf":
        return HFBackend.load(
            str(model), dtype=dtype, device=device, batch_size=batch_size, max_model_len=max_model_len
        )
    if backend == "vllm":
        return VLLMBackend.load(
            str(model),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
        )
    raise ValueError(f"unknown backend {backend!r}: choose 'hf' or 'vllm'")


def logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))
