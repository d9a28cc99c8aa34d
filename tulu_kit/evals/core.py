"""Evaluation core: config, model resolution, chat formatting, few-shot prompts, resumable predictions, metrics.

Every benchmark module (`tulu_kit/evals/<name>.py`) and every `eval/<name>.ipynb` notebook builds on this file.
A benchmark module is found by convention, not by registration: it defines

* `PROTOCOL: dict`   shots, prompt, decoding, extraction, metric and source (also shown in `eval/README.md`);
* a config dataclass (`EvalConfig` or a subclass) named in `CONFIG`, e.g. `CONFIG = GSM8KConfig`;
* `run(cfg, backend=None) -> dict`           evaluate a model, write predictions.jsonl + metrics.json;
* `score_predictions(preds, data_dir=None) -> Scored`   score prediction records produced anywhere.

`get_benchmark(name)` imports `tulu_kit.evals.<name>`; the `eval`/`score` CLI and the notebooks dispatch through it.

Files under `cfg.out_dir`: `predictions.jsonl` (appended one example at a time, so an interrupted run resumes),
`eval_config.json` (what the predictions were made with; a resume with a different model or protocol is refused),
`metrics.json` (written atomically: score, stderr, counts, protocol) and, from `score_file`, `results.jsonl`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import pkgutil
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tulu_kit.evals.backends import Backend, GenParams, cut_at_stop, load_backend
from tulu_kit.evals.data import MissingDataError, data_root, require_file
from tulu_kit.io import atomic_write_json, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "EvalConfig",
    "GenParams",
    "MissingDataError",
    "PredictionStore",
    "Scored",
    "chat_prompt",
    "cut_at_stop",
    "data_root",
    "few_shot",
    "generate_predictions",
    "get_benchmark",
    "list_benchmarks",
    "load_backend",
    "load_jsonl",
    "match_gold",
    "norm_text",
    "take",
    "make_metrics",
    "mean_stderr",
    "open_backend",
    "predict",
    "require_file",
    "resolve_model",
    "score_file",
    "write_json_atomic",
    "write_jsonl_atomic",
]


@dataclass
class EvalConfig:
    """Settings shared by every benchmark; a benchmark may subclass it to add its own fields."""

    model: str = (
        "../runs/quickstart/quickstart/model"  # model folder, run folder (its last model/), or Hub id
    )
    out_dir: str = "runs/eval"  # predictions.jsonl, metrics.json and eval_config.json go here
    backend: Literal["hf", "vllm"] = "hf"  # hf: transformers generate; vllm: GPU engine (optional extra)
    chat: bool = False  # wrap each prompt in the model's chat template as one user turn
    max_examples: int | None = None  # cap: in total, or per task / subject / language; None: all
    subset: str = ""  # comma-separated tasks / subjects / languages to keep (empty: all)
    n_shot: int | None = None  # number of in-context exemplars; None: the protocol's number
    max_new_tokens: int | None = None  # generation budget; None: the protocol's number
    batch_size: int = 8  # prompts per forward pass / generate call
    data_dir: str | None = None  # benchmark data root; None: $TULU_KIT_DATA or ~/.cache/tulu_kit/data
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    seed: int = 42  # picks the max_examples subset; seeds sampling and the vLLM engine
    # sampling, identical in both backends (greedy benchmarks keep temperature 0)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling; 1 = off
    top_k: int = 0  # keep the k most likely tokens; 0 = off (transformers alone would apply 50)
    # engine
    max_model_len: int = -1  # context in tokens; -1: the model's own (vLLM: the longest that fits the GPU)
    gpu_memory_utilization: float = 0.9  # vLLM: fraction of each GPU for weights + KV cache
    tensor_parallel_size: int = 1  # vLLM: GPUs one model is split across (70B: 4 or 8)

    def sampling(self, params: GenParams) -> GenParams:
        """A benchmark's `params` (budget, stop strings) with this config's temperature, top_p, top_k, seed."""
        return dataclasses.replace(
            params, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed
        )


# ---------------------------------------------------------------------------------------------- model + backend
def resolve_model(model: str | Path) -> str:
    """A model folder as is; a stage folder -> its `model/`; a run folder -> the last stage with a `model/`.

    The stage order of a run folder comes from its resolved `config.yaml` (`stages:` mapping) when present,
    else the most recently written `*/model/`. Anything that is not a local folder is passed on (a Hub id).
    """
    p = Path(model).expanduser()
    if not p.is_dir():
        if p.exists() or str(model).startswith((".", "/", "~")):
            raise FileNotFoundError(f"model {model!r}: no such folder")
        return str(model)
    if (p / "config.json").is_file():
        return str(p)
    if (p / "model" / "config.json").is_file():
        return str(p / "model")
    candidates = [d.parent.parent for d in p.glob("*/model/config.json")]  # stage folders
    if not candidates:
        raise FileNotFoundError(f"model {model!r}: neither a model folder (config.json) nor a run folder")
    order = _stage_order(p)
    ranked = [c for c in candidates if c.name in order]
    if ranked:
        return str(max(ranked, key=lambda c: order.index(c.name)) / "model")
    return str(max(candidates, key=lambda c: (c / "model" / "config.json").stat().st_mtime) / "model")


def _stage_order(run_dir: Path) -> list[str]:
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return []
    import yaml

    stages = (yaml.safe_load(cfg.read_text()) or {}).get("stages") or {}
    return list(stages) if isinstance(stages, dict) else []


def open_backend(cfg: EvalConfig) -> Backend:
    """Load the backend `cfg.backend` for `cfg.model` (resolved as a path or run folder)."""
    if not cfg.model:
        raise ValueError("EvalConfig.model is empty: give a model folder, a run folder or a Hub id")
    return load_backend(
        resolve_model(cfg.model),
        cfg.backend,
        cfg.dtype,
        batch_size=cfg.batch_size,
        max_model_len=cfg.max_model_len,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        tensor_parallel_size=cfg.tensor_parallel_size,
        seed=cfg.seed,
    )


# ---------------------------------------------------------------------------------------------- prompts
def chat_prompt(tokenizer: Any, text: str, chat: bool, assistant_prefix: str = "") -> str:
    """The prompt string the model sees: raw text, or one user turn through the model's chat template.

    `assistant_prefix` starts the answer (e.g. "Answer:" or "The answer is:") and is appended after the
    generation prompt in chat mode (after a space if the template does not end in whitespace, as
    open-instruct does), or directly after `text` otherwise.
    """
    if not chat:
        return text + assistant_prefix
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat=True but the tokenizer has no chat template (set one with set_chat_template)")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    if assistant_prefix and rendered and not rendered[-1].isspace():
        rendered += " "
    return rendered + assistant_prefix


def few_shot(exemplars: Iterable[str], query: str, header: str = "", sep: str = "\n\n") -> str:
    """`header` + exemplars + query joined by `sep` (each exemplar already formatted with its answer)."""
    parts = ([header] if header else []) + list(exemplars) + [query]
    return sep.join(parts)


def select_subset(names: list[str], subset: str, what: str) -> list[str]:
    """Filter `names` by a comma-separated `subset`; unknown names are an error listing the valid ones."""
    if not subset.strip():
        return names
    wanted = [s.strip() for s in subset.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {names}")
    return [n for n in names if n in wanted]


def take(examples: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded random subset of size `n` (all when n is None); a larger `n` keeps the smaller subset's items,
    so raising `max_examples` resumes instead of starting over."""
    if n is None or n >= len(examples):
        return examples
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:n])]


def norm_text(text: str) -> str:
    """Whitespace-normalized text, the key that matches a prediction to its gold example."""
    return " ".join(str(text).split())


def match_gold(preds: list[dict], gold: list[dict], keys: tuple[str, ...], source: str) -> list[dict]:
    """For each prediction, the gold example whose text under one of `keys` matches it (whitespace-normalized).

    A prediction without any of `keys`, or whose text is not in the benchmark, is an error naming its row.
    """
    index: dict[str, dict] = {}
    for g in gold:
        for k in keys:
            if k in g:
                index.setdefault(norm_text(g[k]), g)
    out = []
    for row, p in enumerate(preds, 1):
        key = next((k for k in keys if k in p), None)
        if key is None:
            raise ValueError(
                f"prediction {row}: needs one of the fields {list(keys)} to find its gold answer"
            )
        if "output" not in p:
            raise ValueError(f"prediction {row}: needs an 'output' field (the model's text)")
        match = index.get(norm_text(p[key]))
        if match is None:
            raise ValueError(f"prediction {row}: {key} {str(p[key])[:80]!r}... is not in {source}")
        out.append(match)
    return out


# ---------------------------------------------------------------------------------------------- file IO
# write_json_atomic / write_jsonl_atomic / load_jsonl are tulu_kit.io's, re-exported for benchmark modules
write_json_atomic = atomic_write_json
write_jsonl_atomic = write_jsonl
load_jsonl = read_jsonl


class PredictionStore:
    """Append-only `predictions.jsonl` keyed by each record's `id`; reopening it resumes a run.

    A torn last line (the process was killed mid-write) is dropped; a bad line elsewhere is an error.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good = 0
        for n, line in enumerate(lines, 1):
            if not line.strip():
                good += len(line) + 1
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):  # torn tail: no newline was written after it
                    log.warning("%s: dropping an incomplete last line", self.path)
                    with open(self.path, "r+b") as f:
                        f.truncate(good)
                    return
                raise ValueError(f"{self.path}:{n}: not valid JSON; delete the file to start over") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError(f"{self.path}:{n}: a prediction record needs an 'id' field")
            self.records[str(rec["id"])] = rec
            good += len(line) + 1

    def __contains__(self, key: object) -> bool:
        return str(key) in self.records

    def __getitem__(self, key: str) -> dict:
        return self.records[str(key)]

    def __len__(self) -> int:
        return len(self.records)

    def append(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                self.records[str(r["id"])] = r
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------- running
_RESUME_IGNORED = {"out_dir", "max_examples", "subset", "batch_size", "data_dir", "gpu_memory_utilization"}


def _check_resume(cfg: EvalConfig, out: Path) -> None:
    """Refuse to mix predictions made with a different model / protocol into one predictions.jsonl."""
    now = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUME_IGNORED}
    path = out / "eval_config.json"
    if path.exists() and (out / "predictions.jsonl").exists():
        before = {k: v for k, v in json.loads(path.read_text()).items() if k not in _RESUME_IGNORED}
        diff = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
        if diff:
            raise ValueError(
                f"{out}/predictions.jsonl was made with other settings {diff} (before, now); "
                "use another out_dir or delete predictions.jsonl"
            )
    write_json_atomic(path, dataclasses.asdict(cfg))


def predict(
    cfg: EvalConfig,
    examples: list[dict],
    compute: Callable[[Backend, list[dict]], list[dict]],
    backend: Backend | None = None,
    sort_key: Callable[[dict], int] | None = None,
) -> list[dict]:
    """Run `compute(backend, chunk)` over the examples not yet in predictions.jsonl; return all, in order.

    Each example needs a unique string `id`; `compute` returns one record (with that `id`) per example.
    Chunks hold `cfg.batch_size` examples (longest first under `sort_key`) and are appended as they finish.
    """
    from tqdm.auto import tqdm

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
    store = PredictionStore(out / "predictions.jsonl")
    todo = [e for e in examples if e["id"] not in store]
    if len(todo) < len(examples):
        log.info("resuming: %d of %d examples already in %s", len(examples) - len(todo), len(examples), out)
    if todo:
        opened = backend is None
        backend = backend or open_backend(cfg)
        if sort_key:
            todo.sort(key=lambda e: -sort_key(e))
        step = cfg.batch_size if cfg.backend == "hf" else max(cfg.batch_size, 512)
        for s in tqdm(range(0, len(todo), step), desc=Path(cfg.out_dir).name, leave=False):
            chunk = todo[s : s + step]
            records = compute(backend, chunk)
            if [str(r["id"]) for r in records] != [str(e["id"]) for e in chunk]:
                raise RuntimeError("compute() must return one record per example, in order")
            store.append(records)
        if opened:  # free the GPU before judges / classifiers load
            backend.close()
    return [store[e["id"]] for e in examples]


def generate_predictions(
    cfg: EvalConfig,
    examples: list[dict],
    build: Callable[[dict, bool], tuple[str, str]],
    params: GenParams,
    backend: Backend | None = None,
) -> list[dict]:
    """Generation benchmarks: `build(example, chat) -> (user_text, assistant_prefix)`; records get prompt + output.

    Sampling (temperature, top_p, top_k, seed) comes from `cfg`, so what metrics.json records is what ran.
    """
    params = cfg.sampling(params)

    def compute(be: Backend, chunk: list[dict]) -> list[dict]:
        pairs = [build(e, cfg.chat) for e in chunk]
        prompts = [chat_prompt(be.tokenizer, text, cfg.chat, prefix) for text, prefix in pairs]
        outputs = be.generate(prompts, params)
        return [{**e, "prompt": p, "output": o} for e, p, o in zip(chunk, prompts, outputs)]

    return predict(cfg, examples, compute, backend, sort_key=lambda e: len(build(e, cfg.chat)[0]))


# ---------------------------------------------------------------------------------------------- metrics
def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); stderr is 0 for n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def make_metrics(
    benchmark: str,
    metric: str,
    values: list[float],
    protocol: dict,
    groups: dict[str, list[float]] | None = None,
    macro: bool = False,
    extra: dict | None = None,
) -> dict:
    """metrics.json content. `groups` gives per-task/subject/language scores; `macro` averages over them.

    Macro stderr treats groups as independent: sqrt(sum_g se_g^2) / G.
    """
    # nothing scored (no judge / classifier configured): null, never NaN, which is not JSON
    score, stderr = mean_stderr(values) if values else (None, None)
    sub = {g: mean_stderr(v) for g, v in (groups or {}).items() if v}
    if macro and sub:
        score = sum(m for m, _ in sub.values()) / len(sub)
        stderr = math.sqrt(sum(se**2 for _, se in sub.values())) / len(sub)
    counts: dict[str, Any] = {"n": len(values)}
    if values and all(v in (0, 1) for v in values):
        counts["correct"] = int(sum(values))
    if groups:
        counts["per_group"] = {g: len(v) for g, v in groups.items()}
    return {
        "benchmark": benchmark,
        "metric": metric,
        "score": score,
        "stderr": stderr,
        "counts": counts,
        "subscores": {g: m for g, (m, _) in sub.items()},
        "protocol": protocol,
        **(extra or {}),
    }


@dataclass
class Scored:
    """What `score_predictions` returns: metrics.json content and one verdict per prediction, in input order."""

    metrics: dict
    verdicts: list[dict] = field(default_factory=list)


def finish(cfg: EvalConfig, scored: Scored) -> dict:
    """Write metrics.json (+ the resolved model and config) atomically under cfg.out_dir; return it."""
    metrics = {**scored.metrics, "model": cfg.model, "config": dataclasses.asdict(cfg)}
    write_jsonl_atomic(Path(cfg.out_dir) / "results.jsonl", scored.verdicts)
    write_json_atomic(Path(cfg.out_dir) / "metrics.json", metrics)
    if metrics["score"] is None:  # nothing scored (no judge / classifier): "%.4f" % None would fail
        log.info("%s: %s not scored", metrics["benchmark"], metrics["metric"])
    else:
        log.info(
            "%s: %s = %.4f ± %.4f",
            metrics["benchmark"],
            metrics["metric"],
            metrics["score"],
            metrics["stderr"],
        )
    return metrics


# ---------------------------------------------------------------------------------------------- registry
ALIASES = {"math500": "math", "minerva_math": "math", "truthfulqa_mc": "truthfulqa", "tydiqa_goldp": "tydiqa"}
_NOT_BENCHMARKS = {"core", "backends", "data", "sandbox", "judges"}


def get_benchmark(name: str) -> Any:
    """The benchmark module `tulu_kit.evals.<name>` (aliases allowed); an unknown name lists the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in _NOT_BENCHMARKS or not key.isidentifier():
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}")
    try:
        mod = importlib.import_module(f"tulu_kit.evals.{key}")
    except ModuleNotFoundError as e:
        if e.name != f"tulu_kit.evals.{key}":
            raise
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}") from None
    if not all(hasattr(mod, a) for a in ("PROTOCOL", "CONFIG", "run", "score_predictions")):
        raise ValueError(
            f"tulu_kit.evals.{key} is not a benchmark module (needs PROTOCOL, CONFIG, run, score)"
        )
    return mod


def list_benchmarks() -> list[str]:
    import tulu_kit.evals as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    found = []
    for n in sorted(n for n in names if n not in _NOT_BENCHMARKS):
        mod = importlib.import_module(f"tulu_kit.evals.{n}")
        if all(hasattr(mod, a) for a in ("PROTOCOL", "CONFIG", "run", "score_predictions")):
            found.append(n)  # helper modules (judges, sandbox, ...) are skipped
    return found


def score_file(
    benchmark: str, predictions: str | Path, out_dir: str | Path | None = None, data_dir: str | None = None
) -> dict:
    """Score a predictions JSONL made anywhere; with `out_dir` write metrics.json and results.jsonl there."""
    mod = get_benchmark(benchmark)
    preds = load_jsonl(predictions)
    if not preds:
        raise ValueError(f"{predictions}: no predictions")
    scored = mod.score_predictions(preds, data_dir=data_dir)
    metrics = {**scored.metrics, "predictions": str(predictions)}
    if out_dir is not None:
        write_jsonl_atomic(Path(out_dir) / "results.jsonl", scored.verdicts)
        write_json_atomic(Path(out_dir) / "metrics.json", metrics)
    return metrics


def evaluate(benchmark: str, **overrides: Any) -> dict:
    """Build the benchmark's config from keyword overrides and run it (what `tulu-kit eval` calls)."""
    mod = get_benchmark(benchmark)
    return mod.run(mod.CONFIG(**overrides))
