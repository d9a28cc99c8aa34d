"""The benchmark suite: `core` (backends, prompts, predictions, metrics) and one module per benchmark.

`tulu_kit.evals.get_benchmark("gsm8k").run(cfg)` is what `tulu-kit eval` and `eval/gsm8k.ipynb` call.
"""

from tulu_kit.evals.core import EvalConfig, evaluate, get_benchmark, list_benchmarks, score_file

__all__ = ["EvalConfig", "evaluate", "get_benchmark", "list_benchmarks", "score_file"]
