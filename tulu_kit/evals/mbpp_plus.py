"""MBPP+ (EvalPlus): 399 MBPP problems with 35x more tests, differential testing (`eval/mbpp_plus.ipynb`).

Prompt as open-instruct's `eval/mbpp/run_eval.py`: user turn "Complete the following python function.\\n\\n\\n"
+ the task text + the signature (the canonical code up to its first ":"), answer primed with "Here is the
completed function:\\n\\n\\n```python\\n", stop at "```"; n samples, temperature 0.1 / 0.8, top-p 0.95.
Scoring is evalplus's (harness in `humaneval_plus.py`), with evalplus `data/mbpp.py`'s input deserialization
(JSON lists back to the tuples / sets / complex numbers the functions expect) and its MBPP special oracles.
"""

from __future__ import annotations

from dataclasses import dataclass

from tulu_kit.evals import humaneval
from tulu_kit.evals.core import Scored, take
from tulu_kit.evals.data import require_file
from tulu_kit.evals.humaneval import group_samples, read_problems, score_samples
from tulu_kit.evals.humaneval_plus import HumanEvalPlusConfig, evalplus_program
from tulu_kit.evals.sandbox import Limits, Sample

NAME = "mbpp_plus"
REPEATS = True  # n samples per task (pass@k)
DATASET = "mbpp"
FILE = "mbpp/MbppPlus.jsonl.gz"
URL = "https://github.com/evalplus/mbppplus_release/releases/download/v0.1.0/MbppPlus.jsonl.gz"
STOPS = ("```",)
PROTOCOL = {
    **humaneval.PROTOCOL,
    "prompt": "chat: 'Complete the following python function.\\n\\n\\n' + task text + signature; answer "
    "primed with 'Here is the completed function:\\n\\n\\n```python\\n'",
    "decoding": "n=20 samples, temperature 0.1 (pass@1) or 0.8 (pass@10), top_p 0.95, 512 new tokens, stop ```",
    "metric": "unbiased pass@k on base + plus inputs (evalplus differential testing), sandboxed",
    "source": "open-instruct eval/mbpp/run_eval.py; evalplus evaluate.py, data/mbpp.py",
    "data": FILE,
}


@dataclass
class MbppPlusConfig(HumanEvalPlusConfig):
    """MBPP+ settings: HumanEval+'s shape (the evalplus limits), its own output folder."""

    out_dir: str = "../runs/lab/eval_mbpp_plus"


CONFIG = MbppPlusConfig

# evalplus data/mbpp.py `mbpp_deserialize_inputs`, as source for the sandboxed harness
DESERIALIZE = """
def _deserialize(task_id, inputs):
    n = int(task_id.split("/")[-1])
    if n in [2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740,
             744, 809]:
        return [[tuple(lst) for lst in inp] for inp in inputs]
    if n in [63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780]:
        return [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
    if n in [75, 413, 444, 753]:
        return [[[tuple(lst) for lst in inp[0]]] + [inp[1]] for inp in inputs]
    if n in (106, 750):
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if n == 115:
        return [[[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]] for inp in inputs]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in [250, 405, 446, 617, 720, 763, 808]:
        return [[tuple(inp[0])] + [inp[1]] for inp in inputs]
    if n in [259, 401, 445]:
        out = [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in out]
    if n == 278:
        out = [[[tuple(item) if isinstance(item, list) else item for item in inp[0]]] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in out]
    if n == 307:
        return [[tuple(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{key: tuple(value) for key, value in inp[0].items()}] + inp[1:] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in [580, 615, 791]:
        def tup(x):
            return tuple(tup(i) for i in x) if isinstance(x, list) else x
        return [tup(inp) for inp in inputs]
    return inputs
"""


def signature(problem: dict) -> str:
    """open-instruct's `code.split(":")[0]`: the canonical code up to its first colon (the def line)."""
    return problem["canonical_solution"].strip().split(":")[0]


def build_prompt(problem: dict, chat: bool) -> tuple[str, str]:
    text = problem["prompt"].strip() + "\n" + signature(problem)
    if not chat:
        return text, ""
    return humaneval.INSTRUCTION + text, humaneval.ANSWER_PREFIX


def program(problem: dict, completion: str) -> Sample:
    """evalplus's sample convention: solution = prompt (a docstring) + completion (a whole function)."""
    return evalplus_program(problem, problem["prompt"] + "\n" + completion, DATASET, DESERIALIZE)


def load_problems(data_dir: str | None = None) -> dict[str, dict]:
    return read_problems(require_file(data_dir, FILE, NAME))


def score_predictions(preds: list[dict], data_dir: str | None = None, workers: int | None = None) -> Scored:
    """Score official-format samples ({task_id, completion}) with evalplus's base + plus tests."""
    samples = group_samples(preds, load_problems(data_dir), FILE)
    limits = Limits(timeout_s=MbppPlusConfig.timeout_s, memory_mb=MbppPlusConfig.memory_mb)
    return score_samples(NAME, samples, program, limits, PROTOCOL, workers)


SPEC = humaneval.CodeBenchmark(NAME, build_prompt, STOPS, program, PROTOCOL)


def run(cfg: MbppPlusConfig, backend=None) -> dict:
    """MBPP+ end to end: sample whole functions, execute base + plus tests in the sandbox, write pass@k."""
    problems = take(list(load_problems(cfg.data_dir).values()), cfg.max_examples, cfg.seed)
    return humaneval.run_code_benchmark(cfg, problems, SPEC, backend)
