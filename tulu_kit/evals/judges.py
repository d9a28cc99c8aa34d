"""Judges for the LLM-judged benchmarks: any OpenAI-compatible chat endpoint, and local P(yes) judge models.

Used by `xstest.py` (refusal labels), `alpaca_eval.py` (pairwise preference) and `truthfulqa_gen.py` (truth /
info judges), so by `eval/xstest.ipynb`, `eval/alpaca_eval.ipynb`, `eval/truthfulqa_gen.ipynb`.

* `OpenAIJudge(base_url, model)` speaks `POST {base_url}/chat/completions` (OpenAI, Azure-compatible proxies,
  a local `vllm serve` or `sglang` server...). Standard library only (urllib); the API key is read from an
  environment variable, never from a config file. Answers are cached in a JSONL file keyed by the request, so an
  interrupted judging run resumes and a re-run costs nothing.
* `YesProbJudge(model_path)` is open-instruct's TruthfulQA judge rule: P(" yes" | prompt) from a causal LM.

Tests replace the endpoint with a local fake HTTP server; nothing here is faked in the library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """The judge endpoint failed or answered something unusable."""


class OpenAIJudge:
    """A chat-completions client for one judge model at one OpenAI-compatible endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        cache_path: str | Path | None = None,
        timeout_s: float = 120.0,
        retries: int = 3,
    ):
        if not base_url:
            raise ValueError(
                "OpenAIJudge needs a base_url, e.g. https://api.openai.com/v1 or http://localhost:8000/v1"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout_s, self.retries = model, api_key_env, timeout_s, retries
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, dict] = {}
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.cache[rec["key"]] = rec["response"]
                except (ValueError, KeyError):
                    continue  # a torn last line from an interrupted run

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries):
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310 - user-set endpoint
                    return json.loads(r.read())
            except (urllib.error.URLError, TimeoutError, ValueError) as e:
                if attempt == self.retries - 1:
                    raise JudgeError(f"judge {self.model} at {self.url}: {e}") from None
                time.sleep(2**attempt)
        raise AssertionError("unreachable")

    def chat(self, messages: list[dict], **params) -> dict:
        """The raw response of one chat completion (temperature 0 unless given), through the cache."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0, **params}
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self._post(body)
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "response": self.cache[key]}) + "\n")
        return self.cache[key]

    def text(self, messages: list[dict], max_tokens: int = 16) -> str:
        resp = self.chat(messages, max_tokens=max_tokens)
        try:
            return resp["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge {self.model}: unexpected response {str(resp)[:200]}") from None

    def token_probs(self, messages: list[dict], tokens: list[str], top_logprobs: int = 5) -> dict[str, float]:
        """Probability of each of `tokens` as the first answer token, from the endpoint's top_logprobs."""
        resp = self.chat(messages, max_tokens=1, logprobs=True, top_logprobs=top_logprobs)
        try:
            top = resp["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                f"judge {self.model}: no logprobs in the response (does the server support them?)"
            ) from None
        probs = {t: 0.0 for t in tokens}
        for entry in top:
            if entry.get("token") in probs:
                probs[entry["token"]] += math.exp(entry["logprob"])
        return probs


def make_judge(base_url: str, model: str, api_key_env: str, cache_path: str | Path) -> OpenAIJudge | None:
    """The configured judge, or None (with a log line) when no endpoint is set."""
    if not base_url:
        return None
    return OpenAIJudge(base_url, model, api_key_env, cache_path)


NO_JUDGE = (
    "no judge endpoint configured (judge_url is empty): outputs are saved, judge-based metrics are skipped. "
    "Set judge_url (any OpenAI-compatible /v1 endpoint, e.g. a local `vllm serve` server) and judge_model, "
    "then re-run or `tulu-kit score` the saved predictions."
)


class YesProbJudge:
    """open-instruct's TruthfulQA judge: P(" yes" | prompt) from a fine-tuned causal LM (threshold 0.5)."""

    def __init__(self, model_path: str, dtype: str = "auto", batch_size: int = 8):
        from tulu_kit.evals.backends import load_backend

        self.backend = load_backend(model_path, "hf", dtype, batch_size=batch_size)

    def p_yes(self, prompts: list[str]) -> list[float]:
        scores = self.backend.loglikelihood([(p, " yes") for p in prompts])
        return [math.exp(ll) for ll, _ in scores]
