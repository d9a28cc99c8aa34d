"""HumanEval: sample n completions per problem, run each in the sandbox, unbiased pass@k (`eval/humaneval.ipynb`).

Also the shared pipeline of the code benchmarks: `humaneval_plus.py` and `mbpp_plus.py` reuse `CodeConfig`,
the sampler and pass@k, and describe what they swap (data, prompt, test program, limits) in a `CodeBenchmark` spec.

Protocol as open-instruct ran it (`eval/codex_humaneval/run_eval.py`): the user turn is "Complete the following
python function.\\n\\n\\n" + the problem's prompt; the answer is primed with "Here is the completed
function:\\n\\n\\n```python\\n" + the prompt, so the model writes the body; n = 20 samples at temperature 0.1
(for pass@1) or 0.8 (for pass@10), top-p 0.95, 512 new tokens, stop at the Codex-paper stops "\\nclass", "\\ndef",
"\\n#", "\\nif", "\\nprint" and at "```". A sample passes when `prompt + completion + test + check(entry_point)`
runs without an exception (openai/human-eval `execution.py`, timeout 3 s); the tests run outside the
candidate's process (`sandbox.run_tests`). pass@k is the unbiased estimator of
Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", arXiv 2107.03374, eq. 1):
pass@k = E_task[1 - C(n - c, k) / C(n, k)].

Predictions use the official sample format: JSONL of {"task_id", "completion"} (n lines per task).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tulu_kit.evals.core import (
    EvalConfig,
    GenParams,
    Scored,
    chat_prompt,
    finish,
    make_metrics,
    mean_stderr,
    predict,
    take,
)
from tulu_kit.evals.data import require_file
from tulu_kit.evals.sandbox import ExecResult, Limits, Sample, isolation, run_many
from tulu_kit.io import iter_jsonl

log = logging.getLogger(__name__)

NAME = "humaneval"
REPEATS = True  # n samples per task (pass@k): a predictions file repeats a task by protocol
FILE = "humaneval/HumanEval.jsonl.gz"
URL = "https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz"
INSTRUCTION = "Complete the following python function.\n\n\n"
ANSWER_PREFIX = "Here is the completed function:\n\n\n```python\n"
STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "```")

PROTOCOL = {
    "shots": 0,
    "prompt": "chat: 'Complete the following python function.\\n\\n\\n' + prompt; answer primed with "
    "'Here is the completed function:\\n\\n\\n```python\\n' + prompt",
    "decoding": "n=20 samples, temperature 0.1 (pass@1) or 0.8 (pass@10), top_p 0.95, 512 new tokens, "
    "stops \\nclass \\ndef \\n# \\nif \\nprint ```",
    "extraction": "completion = the generated function body",
    "metric": "unbiased pass@k (Chen et al. 2021), sandboxed execution, 3 s per sample",
    "source": "open-instruct eval/codex_humaneval/run_eval.py; openai/human-eval execution.py",
    "data": FILE,
}


@dataclass
class CodeConfig(EvalConfig):
    """Settings of the code benchmarks (HumanEval, HumanEval+, MBPP+) on top of the shared EvalConfig."""

    out_dir: str = "../runs/lab/eval_humaneval"
    chat: bool = True  # open-instruct evaluates Tulu models with the chat format
    n_samples: int = 20  # completions per problem (n of pass@k); 1 with temperature 0 = greedy pass@1
    temperature: float = 0.1  # 0.1 for pass@1, 0.8 for pass@10 (open-instruct / Codex paper)
    top_p: float = 0.95  # nucleus sampling
    timeout_s: float = 3.0  # wall-clock limit per sample (human-eval: 3 s)
    memory_mb: int = 2048  # address-space limit per sample
    workers: int = 0  # samples executed at once; 0 = one per CPU core
    guard: bool = True  # also apply human-eval's reliability_guard inside the sandbox

    def __post_init__(self):
        if self.n_samples < 1:
            raise ValueError("n_samples must be >= 1")
        if self.temperature == 0 and self.n_samples > 1:
            raise ValueError("temperature 0 (greedy) gives n identical samples: use n_samples=1")


CONFIG = CodeConfig


# ---------------------------------------------------------------------------------------------- data
def read_problems(path: str | Path) -> dict[str, dict]:
    """Problems of a (gzipped) JSONL file keyed by task_id; a row without the needed fields is an error."""
    path = Path(path)
    problems = {}
    for n, row in iter_jsonl(path):
        missing = [k for k in ("task_id", "prompt", "entry_point") if k not in row]
        if missing:
            raise ValueError(f"{path}: line {n}: missing field(s) {missing}")
        problems[row["task_id"]] = row
    return problems


def load_problems(data_dir: str | None = None) -> dict[str, dict]:
    return read_problems(require_file(data_dir, FILE, NAME))


def build_prompt(problem: dict, chat: bool) -> tuple[str, str]:
    """(user text, answer prefix) of open-instruct's chat protocol; the bare prompt without chat."""
    if not chat:
        return problem["prompt"], ""
    return INSTRUCTION + problem["prompt"], ANSWER_PREFIX + problem["prompt"]


def program(problem: dict, completion: str) -> Sample:
    """What human-eval executes for one sample (`prompt + completion + test + check(entry_point)`), split in two:
    the prompt and completion run sandboxed; the prompt again (for its helpers), the test and the check run in
    the sandbox's trusted process, where the entry point is the candidate's, called over a pipe."""
    ep, prompt = problem["entry_point"], problem["prompt"]
    return Sample(prompt + completion, f"{problem['test']}\ncheck({ep})\n", _helpers(prompt), (ep,))


def _helpers(prompt: str) -> str:
    """The prompt as code the trusted side can run for its helper functions (a bare signature gets a body)."""
    try:
        compile(prompt, "prompt.py", "exec")
        return prompt
    except SyntaxError:
        return prompt + "    pass\n"


# ---------------------------------------------------------------------------------------------- pass@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with n samples, c correct (Chen et al. 2021, numerically stable form)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def group_samples(preds: list[dict], problems: dict[str, dict], source: str) -> list[tuple[dict, str]]:
    """(problem, completion) per prediction row; unknown task ids and missing fields name their row."""
    out = []
    for row, p in enumerate(preds, 1):
        for key in ("task_id", "completion"):
            if key not in p:
                raise ValueError(f"prediction {row}: missing field {key!r} (format: {{task_id, completion}})")
        if p["task_id"] not in problems:
            raise ValueError(f"prediction {row}: task_id {p['task_id']!r} is not in {source}")
        if not isinstance(p["completion"], str):
            raise ValueError(f"prediction {row}: 'completion' must be a string")
        out.append((problems[p["task_id"]], p["completion"]))
    return out


def score_samples(
    benchmark: str,
    samples: list[tuple[dict, str]],
    make_program: Callable[[dict, str], str],
    limits: Limits,
    protocol: dict,
    workers: int | None = None,
) -> Scored:
    """Execute every sample, then pass@1 (and pass@10 where every task has n >= 10) over tasks."""
    results = run_many([make_program(p, c) for p, c in samples], limits, workers=workers or None)
    per_task: dict[str, list[ExecResult]] = defaultdict(list)
    verdicts = []
    for (problem, _), res in zip(samples, results):
        tid = problem["task_id"]
        verdicts.append(
            {"task_id": tid, "completion_id": len(per_task[tid]), "passed": res.passed, "result": res.result}
        )
        per_task[tid].append(res)
    return Scored(_pass_metrics(benchmark, per_task, protocol), verdicts)


def _pass_metrics(benchmark: str, per_task: dict[str, list[ExecResult]], protocol: dict) -> dict:
    ns = [len(r) for r in per_task.values()]
    extra: dict = {"n_samples": min(ns), "n_tasks": len(per_task), "isolation": isolation()}
    per_k = {}
    for k in (1, 10, 100):
        if min(ns) >= k:
            per_k[k] = [pass_at_k(len(r), sum(x.passed for x in r), k) for r in per_task.values()]
            extra[f"pass@{k}"], extra[f"pass@{k}_stderr"] = mean_stderr(per_k[k])  # over tasks
    groups = {t: [float(x.passed) for x in r] for t, r in per_task.items()}
    metrics = make_metrics(benchmark, "pass@1", per_k[1], protocol, extra=extra)
    metrics["counts"]["samples_passed"] = sum(sum(g) for g in groups.values())
    return metrics


def score_predictions(preds: list[dict], data_dir: str | None = None, workers: int | None = None) -> Scored:
    """Score official-format samples ({task_id, completion}) against HumanEval's own tests."""
    samples = group_samples(preds, load_problems(data_dir), FILE)
    return score_samples(NAME, samples, program, Limits(timeout_s=3.0), PROTOCOL, workers)


# ---------------------------------------------------------------------------------------------- generation
def _params(cfg: CodeConfig, stops, seed: int) -> GenParams:
    """The decoding of one sample (sample j uses seed cfg.seed + j)."""
    return GenParams(
        max_new_tokens=cfg.max_new_tokens or 512,
        temperature=cfg.temperature,
        top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
        top_k=cfg.top_k,
        stop=tuple(stops),
        seed=seed,
    )


def sample_completions(
    cfg: CodeConfig, problems: list[dict], build: Callable[[dict, bool], tuple[str, str]], stops, backend=None
) -> list[dict]:
    """n_samples completions per problem, resumable; sample j uses seed cfg.seed + j."""
    examples = [
        {"id": f"{p['task_id']}#{j}", "task_id": p["task_id"], "sample": j}
        for j in range(cfg.n_samples)
        for p in problems
    ]
    by_id = {p["task_id"]: p for p in problems}

    def compute(be, chunk: list[dict]) -> list[dict]:
        out: dict[str, dict] = {}
        for j in sorted({e["sample"] for e in chunk}):
            part = [e for e in chunk if e["sample"] == j]
            pairs = [build(by_id[e["task_id"]], cfg.chat) for e in part]
            prompts = [chat_prompt(be.tokenizer, text, cfg.chat, prefix) for text, prefix in pairs]
            for e, text in zip(part, be.generate(prompts, _params(cfg, stops, cfg.seed + j))):
                out[e["id"]] = {"id": e["id"], "task_id": e["task_id"], "completion": text}
        return [out[e["id"]] for e in chunk]

    return predict(cfg, examples, compute, backend, prompt_of=lambda e: build(by_id[e["task_id"]], cfg.chat))


@dataclass(frozen=True)
class CodeBenchmark:
    """What one code benchmark puts into the shared pipeline (sample -> execute -> pass@k)."""

    name: str
    build_prompt: Callable[[dict, bool], tuple[str, str]]  # (problem, chat) -> (user text, assistant prefix)
    stops: tuple[str, ...]
    program: Callable[[dict, str], Sample]  # (problem, completion) -> the program + its trusted tests
    protocol: dict
    limits: dict = field(default_factory=dict)  # extra sandbox Limits (e.g. modules to preload)


def run_code_benchmark(cfg: CodeConfig, problems: list[dict], spec: CodeBenchmark, backend=None) -> dict:
    """Sample, execute, score and write metrics.json for one code benchmark."""
    preds = sample_completions(cfg, problems, spec.build_prompt, spec.stops, backend)
    limits = Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb, guard=cfg.guard, **spec.limits)
    by_id = {p["task_id"]: p for p in problems}
    samples = [(by_id[p["task_id"]], p["completion"]) for p in preds]
    scored = score_samples(spec.name, samples, spec.program, limits, spec.protocol, cfg.workers)
    return finish(cfg, scored, _params(cfg, spec.stops, cfg.seed))


SPEC = CodeBenchmark(NAME, build_prompt, STOPS, program, PROTOCOL)


def run(cfg: CodeConfig, backend=None) -> dict:
    """HumanEval end to end: sample completions, execute them in the sandbox, write pass@k."""
    problems = take(list(load_problems(cfg.data_dir).values()), cfg.max_examples, cfg.seed)
    return run_code_benchmark(cfg, problems, SPEC, backend)
