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
    "PredictionError",
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
    "read_predictions",
    "require_file",
    "resolve_model",
    "with_demo_data",
    "score_file",
    "write_json_atomic",
    "write_jsonl_atomic",
]


@dataclass
class EvalConfig:
    """Settings shared by every benchmark; a benchmark may subclass it to add its own fields."""

    model: str = "../runs/lab"  # model folder, stage folder, run folder (its last model/), or Hub id
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
def _is_model_dir(path: Path) -> bool:
    """A transformers checkpoint: its ``config.json`` names a ``model_type`` (a stage's own config does not)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def _looks_like_path(model: str) -> bool:
    """A name that can only be a local path: never sent to the Hub (which would be slow, then a traceback)."""
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:
        return True
    first = model.split("/", 1)[0]
    return "/" in model and Path(first).is_dir()  # runs/x where ./runs exists: a path, not a Hub org


def resolve_model(model: str | Path) -> str:
    """A model folder as is; a stage folder -> its `model/`; a run folder -> the last stage with a `model/`.

    A folder is a model when its `config.json` has a `model_type` (a stage folder's own `config.json` is the
    stage's settings, not a model's). The stage order of a run folder comes from its resolved `config.yaml`
    (`stages:` mapping) when present, else the most recently written `*/model/`. A name that is not a local
    folder is passed on as a Hub id, unless it can only be a path (`runs/x/sft`, `./m`): then it is an error.
    """
    p = Path(model).expanduser()
    if not p.is_dir():
        if p.exists():
            raise FileNotFoundError(f"model {model!r}: a file, not a model folder")
        if _looks_like_path(str(model)):
            raise FileNotFoundError(f"model {model!r}: no such folder (looked in {Path.cwd()})")
        return str(model)
    if _is_model_dir(p):
        return str(p)
    if _is_model_dir(p / "model"):
        return str(p / "model")
    candidates = [d.parent for d in p.glob("*/model") if _is_model_dir(d)]  # stage folders
    if not candidates:
        raise FileNotFoundError(
            f"model {model!r}: neither a model folder (config.json with a model_type), a stage folder with "
            "model/, nor a run folder with */model/"
        )
    order = _stage_order(p)
    ranked = [c for c in candidates if c.name in order]
    if ranked:
        chosen = max(ranked, key=lambda c: order.index(c.name))
    else:
        chosen = max(candidates, key=lambda c: (c / "model" / "config.json").stat().st_mtime)
    log.info("model %s: the run folder's last stage with a model, %s", model, chosen / "model")
    return str(chosen / "model")


def _stage_order(run_dir: Path) -> list[str]:
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return []
    import yaml

    stages = (yaml.safe_load(cfg.read_text()) or {}).get("stages") or {}
    return list(stages) if isinstance(stages, dict) else []


DEMO_NOTE = (
    "DEMO ITEMS: no benchmark data is configured (data_dir is None, $TULU_KIT_DATA is unset and {root} is "
    "empty), so this runs on a few hand-written items shipped in tulu_kit/assets/eval_demo. They are not the "
    "benchmark: the score means nothing. Set data_dir (or $TULU_KIT_DATA) to a folder with the benchmark files "
    "(`tulu-kit data prepare-eval`) to run the real benchmark."
)


def with_demo_data(cfg: EvalConfig) -> EvalConfig:
    """`cfg` as is when benchmark data is configured; else a copy on the shipped demo items, said loudly.

    "Configured" means `data_dir` is set, or `$TULU_KIT_DATA` is, or the default root holds anything. The
    eval notebooks call this so they run with their defaults on a fresh clone; `metrics.json` then records
    `"demo_data": true`. The CLI does not: there a missing file stays an error naming it.
    """
    if cfg.data_dir is not None or os.environ.get("TULU_KIT_DATA"):
        return cfg
    root = data_root(None)
    if root.is_dir() and any(root.iterdir()):
        return cfg
    log.warning(DEMO_NOTE.format(root=root))
    return dataclasses.replace(cfg, data_dir="demo")


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
        _as_trained(tokenizer, [{"role": "user", "content": text}]),
        tokenize=False,
        add_generation_prompt=True,
    )
    if assistant_prefix and rendered and not rendered[-1].isspace():
        rendered += " "
    return rendered + assistant_prefix


def _as_trained(tokenizer: Any, messages: list[dict]) -> list[dict]:
    """The messages in the form the kit's SFT fed this template (text content parts for vision-language
    templates, a system turn merged where the template refuses one), so eval prompts match training."""
    from tulu_kit.data.masks import ChatTemplateError, apply_template_conventions

    try:
        return apply_template_conventions(tokenizer, messages)
    except ChatTemplateError:  # a template the kit does not train on: prompt it as it is
        return messages


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
        seen: dict[str, int] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip():
                good += len(line) + 1
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                if n == len(lines):  # torn tail (no newline after it), a multi-byte character cut included
                    log.warning("%s:%d: dropping an incomplete last line", self.path, n)
                    with open(self.path, "r+b") as f:
                        f.truncate(good)
                    return
                why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "not valid JSON"
                raise ValueError(f"{self.path}:{n}: {why}; delete the file to start over") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError(f"{self.path}:{n}: a prediction record needs an 'id' field")
            key = str(rec["id"])
            if key in seen:
                raise ValueError(
                    f"{self.path}:{n}: id {key!r} already on line {seen[key]}; delete the file to start over"
                )
            seen[key] = n
            self.records[key] = rec
            good += len(line) + 1
        if raw and not raw.endswith(b"\n"):  # a complete last record without its newline: the next append
            with open(self.path, "ab") as f:  # would be glued onto it
                f.write(b"\n")

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


def _resume_settings(cfg: EvalConfig) -> dict:
    """What a predictions.jsonl depends on: the config (minus run-size knobs) and the resolved data folder."""
    settings = dataclasses.asdict(cfg)
    settings["data_root"] = str(data_root(cfg.data_dir).expanduser().resolve())
    return settings


def _check_resume(cfg: EvalConfig, out: Path) -> None:
    """Refuse to mix predictions made with a different model / protocol / data into one predictions.jsonl.

    A predictions.jsonl without its eval_config.json is refused too (nothing says what it was made with).
    """
    now = {k: v for k, v in _resume_settings(cfg).items() if k not in _RESUME_IGNORED}
    path = out / "eval_config.json"
    preds = out / "predictions.jsonl"
    if preds.exists() and preds.stat().st_size and not path.exists():
        raise ValueError(
            f"{preds} exists but {path.name} does not, so nothing says which model, protocol and data made it; "
            "delete predictions.jsonl to start over, or use another out_dir"
        )
    if path.exists() and preds.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{path}: unreadable ({e}); delete it and predictions.jsonl to start over"
            ) from None
        if not isinstance(before, dict):
            raise ValueError(f"{path}: expected a JSON object; delete it and predictions.jsonl to start over")
        before = {k: v for k, v in before.items() if k not in _RESUME_IGNORED}
        before.setdefault("data_root", now["data_root"])  # written before the data folder was recorded
        diff = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
        if diff:
            raise ValueError(
                f"{out}/predictions.jsonl was made with other settings {diff} (before, now); "
                "use another out_dir or delete predictions.jsonl"
            )
    write_json_atomic(path, _resume_settings(cfg))


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
    """Generation benchmarks: `build(example, chat) -> (user_text, assistant_prefix)`; each record gets `prompt`
    (the user text, as the benchmark asks it, so the file can be re-scored as is), `model_input` (exactly what the
    model saw: chat template, prefix) and `output`.

    Sampling (temperature, top_p, top_k, seed) comes from `cfg`, so what metrics.json records is what ran.
    """
    params = cfg.sampling(params)

    def compute(be: Backend, chunk: list[dict]) -> list[dict]:
        pairs = [build(e, cfg.chat) for e in chunk]
        prompts = [chat_prompt(be.tokenizer, text, cfg.chat, prefix) for text, prefix in pairs]
        outputs = be.generate(prompts, params)
        return [
            {**e, "prompt": text, "model_input": p, "output": o}
            for e, (text, _), p, o in zip(chunk, pairs, prompts, outputs)
        ]

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


def finish(cfg: EvalConfig, scored: Scored, params: GenParams | None = None) -> dict:
    """Write metrics.json (with the config and a manifest) and results.jsonl under cfg.out_dir; return metrics.

    The manifest (:func:`eval_manifest`) records what the score depends on, so two numbers can be compared.
    """
    from tulu_kit.results import write_result

    metrics = {**scored.metrics, "model": cfg.model, "config": dataclasses.asdict(cfg)}
    metrics["demo_data"] = str(cfg.data_dir) == "demo"  # hand-written items, not the benchmark
    write_jsonl_atomic(Path(cfg.out_dir) / "results.jsonl", scored.verdicts)
    metrics = write_result(
        cfg.out_dir,
        f"eval_{metrics['benchmark']}",
        model_dir=_model_dir(cfg.model),  # the model actually evaluated (a run folder names its last model/)
        **metrics,
        manifest=eval_manifest(
            metrics["benchmark"], scored.metrics, cfg, params, n_predictions=len(scored.verdicts)
        ),
    )
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


def _model_dir(model: str) -> str:
    try:
        return resolve_model(model)
    except (FileNotFoundError, OSError):
        return str(model)


def _chat_template_text(model: str) -> str | None:
    """The chat template saved with a local model (chat_template.jinja or tokenizer_config.json), or None."""
    folder = Path(_model_dir(model))
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


# benchmark -> the data its score depends on, under the data root (when the module's FILE does not say)
_DATA = {"mmlu": "mmlu", "bbh": "bbh", "tydiqa": "tydiqa_goldp", "toxigen": "toxigen/prompts"}


def _data_fingerprint(benchmark: str, data_dir: str | None, version: str | None = None) -> dict:
    """sha256 (16 hex digits) over the benchmark's data file(s): each relative path and its bytes."""
    import hashlib

    try:
        rel = getattr(get_benchmark(benchmark), "FILE", None)
    except ValueError:
        return {"path": None, "sha256": None}
    if benchmark == "truthfulqa":
        rel = f"truthfulqa/{version or 'v1_817'}/TruthfulQA.csv"
    elif benchmark == "alpaca_eval":
        rel = "alpaca_eval/results"
    elif not isinstance(rel, str) or "{" in rel:
        rel = _DATA.get(benchmark, benchmark)
    root = data_root(data_dir)
    path = root / rel
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        if not f.is_file():
            return {"path": rel, "sha256": None}
        digest.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return {"path": rel, "sha256": digest.hexdigest()[:16]}  # no root: the same data anywhere compares equal


def eval_manifest(
    benchmark: str,
    metrics: dict,
    cfg: EvalConfig | None = None,
    params: GenParams | None = None,
    data_dir: str | None = None,
    n_predictions: int | None = None,
) -> dict:
    """What an eval score depends on beyond the library versions (which ``results.manifest`` adds).

    Chat template (hash of the model's template, and whether prompts went through it), decoding settings,
    batch size, backend, the data file's hash and the number of examples scored. Without ``cfg`` (scoring a
    predictions file made elsewhere) the generation side is unknown and recorded as ``None``.
    """
    from tulu_kit.data.templates import template_hash

    protocol = metrics.get("protocol") or {}
    out: dict = {
        "n_examples": (metrics.get("counts") or {}).get("n"),  # what the score averages over
        "n_predictions": n_predictions,  # records scored (samples for the code benchmarks)
        "data": _data_fingerprint(
            benchmark, cfg.data_dir if cfg else data_dir, getattr(cfg, "version", None)
        ),
    }
    if cfg is None:
        out.update(chat_template={"sha256": None, "applied": None}, decoding=None, batch_size=None)
        return out
    decoding = dataclasses.asdict(params) if params else {"max_new_tokens": cfg.max_new_tokens}
    decoding["protocol"] = protocol.get("decoding")
    out.update(
        chat_template={
            "sha256": template_hash(_chat_template_text(cfg.model)),
            "applied": cfg.chat,
        },
        decoding=decoding,
        batch_size=cfg.batch_size,
        backend=cfg.backend,
        dtype=cfg.dtype,
        n_shot=cfg.n_shot,
        seed=cfg.seed,
        max_examples=cfg.max_examples,
    )
    return out


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


class PredictionError(ValueError):
    """A prediction file that cannot be scored faithfully; the message names the file (and line)."""


# fields holding the model's answer (everything else in a record identifies the example it answers)
_ANSWER_TEXT = ("output", "completion", "response", "prediction")
_ANSWER_SCORES = ("logprobs",)
# benchmarks whose protocol repeats an example: n samples per task (pass@k), many generations per group
_REPEATS = {"humaneval", "humaneval_plus", "mbpp_plus", "toxigen"}


def _decode_lines(path: Path) -> Iterable[tuple[int, bytes]]:
    import gzip
    import zlib

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise PredictionError(f"{path}: not a readable gzip file ({e})") from None
    except IsADirectoryError:
        raise PredictionError(f"{path}: a folder, not a predictions file") from None
    yield from enumerate(data.split(b"\n"), 1)


def read_predictions(path: str | Path, benchmark: str = "") -> list[dict]:
    """The records of a predictions JSONL, each checked: a JSON object on its own line, UTF-8, answer fields
    that are text (output/completion/response/prediction) or scores (logprobs), and -- unless the benchmark's
    protocol repeats examples -- no example predicted twice. Any violation is a `PredictionError` naming the
    file and line."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file")
    rows, seen = [], {}
    for n, line in _decode_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise PredictionError(f"{path}:{n}: not UTF-8 (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise PredictionError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise PredictionError(f"{path}:{n}: JSON nested too deeply") from None
        if not isinstance(rec, dict):
            raise PredictionError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        for k in _ANSWER_TEXT:
            if k in rec and not isinstance(rec[k], str):
                got = "null" if rec[k] is None else type(rec[k]).__name__
                raise PredictionError(f"{path}:{n}: field {k!r} must be text, got {got}")
        for k in _ANSWER_SCORES:
            if k in rec and not isinstance(rec[k], (list, dict)):
                raise PredictionError(f"{path}:{n}: field {k!r} must be a list or an object of log-probs")
        if benchmark not in _REPEATS:
            ident = json.dumps(
                {k: v for k, v in rec.items() if k not in _ANSWER_TEXT + _ANSWER_SCORES}, sort_keys=True
            )
            if ident in seen:
                raise PredictionError(
                    f"{path}:{n}: predicts the same example as line {seen[ident]} (same fields but the answer); "
                    "each example is scored once, so remove one (or give each an 'id')"
                )
            seen[ident] = n
        rows.append(rec)
    return rows


def score_file(
    benchmark: str,
    predictions: str | Path,
    out_dir: str | Path | None = None,
    data_dir: str | None = None,
    **options: Any,
) -> dict:
    """Score a predictions JSONL made anywhere; with `out_dir` write metrics.json and results.jsonl there.

    `options` go to the benchmark's `score_predictions` (e.g. IFEval's `skip_unmatched`); one it does not
    take is an error naming it.
    """
    import inspect

    mod = get_benchmark(benchmark)
    accepted = inspect.signature(mod.score_predictions).parameters
    for name in options:
        if name not in accepted:
            raise ValueError(f"{benchmark}: scoring has no option {name!r}")
    key = ALIASES.get(benchmark.lower(), benchmark.lower())
    preds = read_predictions(predictions, key)
    if not preds:
        raise PredictionError(f"{predictions}: no predictions")
    try:
        scored = mod.score_predictions(preds, data_dir=data_dir, **options)
    except PredictionError:
        raise
    except KeyError as e:
        raise PredictionError(f"{predictions}: a record lacks the field {e.args[0]!r}") from e
    except (ValueError, TypeError, AttributeError) as e:  # a record the scorer cannot use
        raise PredictionError(f"{predictions}: {e}") from e
    from tulu_kit.results import manifest, write_result

    fields = {**scored.metrics, "predictions": str(predictions)}
    extra = eval_manifest(key, scored.metrics, data_dir=data_dir, n_predictions=len(preds))
    if out_dir is None:
        return {**fields, "manifest": manifest(**extra)}
    write_jsonl_atomic(Path(out_dir) / "results.jsonl", scored.verdicts)
    return write_result(out_dir, f"eval_{key}", model_dir=None, **fields, manifest=extra)


def evaluate(benchmark: str, **overrides: Any) -> dict:
    """Build the benchmark's config from keyword overrides and run it (what `tulu-kit eval` calls)."""
    mod = get_benchmark(benchmark)
    return mod.run(mod.CONFIG(**overrides))
