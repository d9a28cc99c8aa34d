"""IFEval: 541 prompts with 25 kinds of verifiable instructions, strict and loose accuracy (`eval/ifeval.ipynb`).

Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models" (arXiv 2311.07911). The 25
checkers are not re-written here: they are lm-evaluation-harness's copy of Google's official code
(`lm_eval/tasks/ifeval/instructions*.py`, Apache-2.0), with its `test_instruction_following_strict/loose`.
Loose mode also accepts the response with its first and/or last line removed and/or `*` stripped.

Protocol as open-instruct ran it (`eval/ifeval/run_eval.py`): the prompt as the user turn, greedy, 2048 new
tokens. Metrics: prompt-level (all instructions of a prompt followed) and instruction-level accuracy, strict and
loose; loose prompt-level is the number Tulu 3 reports. ``subscores``: loose instruction-level accuracy per
instruction id (``counts.per_group``: how many times each was asked), the official report's per-instruction lines
(google-research ``instruction_following_eval/evaluation_lib.py``, ``print_report``'s "tier 1").

Determinism: the sentence splitter needs NLTK's `punkt_tab`; a missing copy is an error whenever a prompt has an
instruction that uses it (never a silent change of verdicts) -- `tulu-kit data prepare-eval` fetches it. `langdetect` is seeded (`DetectorFactory.seed = 0`).
Two official prompts (keys 1122, 1129) pass a non-letter to `letter_frequency`, and the official checker then
draws a random letter; we seed that draw with the prompt's key, so verdicts are reproducible.

Predictions use the official format: JSONL of {"prompt", "response"}.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from tulu_kit.evals.core import (
    EvalConfig,
    GenParams,
    Scored,
    finish,
    generate_predictions,
    make_metrics,
    take,
)
from tulu_kit.evals.data import MissingDataError, require_file
from tulu_kit.io import iter_jsonl, write_jsonl

log = logging.getLogger(__name__)

NAME = "ifeval"
FILE = "ifeval/input_data.jsonl"
URL = (
    "https://raw.githubusercontent.com/google-research/google-research/master/"
    "instruction_following_eval/data/input_data.jsonl"
)
PUNKT_URL = "https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/tokenizers/punkt_tab.zip"
PROTOCOL = {
    "shots": 0,
    "prompt": "the IFEval prompt as the user turn",
    "decoding": "greedy, 2048 new tokens",
    "extraction": "the whole response",
    "metric": "prompt- and instruction-level accuracy, strict and loose (loose prompt-level is primary)",
    "source": "open-instruct eval/ifeval/run_eval.py; checkers: google-research instruction_following_eval "
    "via lm-evaluation-harness lm_eval/tasks/ifeval",
    "data": FILE,
}
# the only checkers that use NLTK's punkt_tab (count_sentences, word_tokenize); the others never touch it
PUNKT_INSTRUCTIONS = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}
METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


@dataclass
class IFEvalConfig(EvalConfig):
    """IFEval settings."""

    out_dir: str = "../runs/lab/eval_ifeval"
    chat: bool = True  # the prompt is one user turn
    nltk_data: str | None = None  # folder with tokenizers/punkt_tab; None = NLTK's search path ($NLTK_DATA)


CONFIG = IFEvalConfig


# ---------------------------------------------------------------------------------------------- checkers
def _nltk_paths(nltk_data: str | None, data_dir: str | None) -> None:
    """Put `nltk_data`, $NLTK_DATA and <data root>/nltk_data (where prepare-eval puts it) on NLTK's path."""
    import nltk

    from tulu_kit.evals.data import data_root

    for folder in (str(data_root(data_dir) / "nltk_data"), os.environ.get("NLTK_DATA"), nltk_data):
        if folder and folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)


def ensure_punkt(nltk_data: str | None = None, data_dir: str | None = None) -> None:
    """Make NLTK find punkt_tab (`nltk_data`, $NLTK_DATA, or <data_dir>/nltk_data, where prepare-eval puts it),
    or raise a MissingDataError that says how."""
    import nltk

    _nltk_paths(nltk_data, data_dir)
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise MissingDataError(
            "IFEval needs NLTK's punkt_tab sentence-splitter data, which was not found on NLTK's path "
            f"{nltk.data.path}. Fetch it with `tulu-kit data prepare-eval --only ifeval` (needs a network), or "
            "set NLTK_DATA / nltk_data to a folder holding tokenizers/punkt_tab/english/"
        ) from None


def needs_punkt(inputs: list[dict]) -> bool:
    return any(i in PUNKT_INSTRUCTIONS for r in inputs for i in r["instruction_id_list"])


def checkers(nltk_data: str | None = None, punkt: bool = True, data_dir: str | None = None):
    """lm-eval's IFEval module. `punkt`: require punkt_tab first. Its import-time `nltk.download` is disabled
    (nothing is fetched at run time: `tulu-kit data prepare-eval` does that), and so is the "Downloaded
    punkt_tab" it would print after that non-download."""
    import contextlib
    import io

    if punkt:
        ensure_punkt(nltk_data, data_dir)
    else:
        _nltk_paths(nltk_data, data_dir)
    import langdetect
    import nltk

    langdetect.DetectorFactory.seed = 0
    download, nltk.download = nltk.download, lambda *a, **k: False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import utils
    finally:
        nltk.download = download
    return utils


def check(
    inp: dict, response: str, nltk_data: str | None = None, data_dir: str | None = None
) -> tuple[list[bool], list[bool]]:
    """(strict, loose) verdict per instruction of one input row for `response`."""
    utils = checkers(nltk_data, punkt=needs_punkt([inp]), data_dir=data_dir)
    example = utils.InputExample(
        key=inp["key"],
        instruction_id_list=inp["instruction_id_list"],
        prompt=inp["prompt"],
        kwargs=inp["kwargs"],
    )
    state = random.getstate()
    try:
        random.seed(inp["key"])  # the official checker draws a letter at random for invalid kwargs
        strict = utils.test_instruction_following_strict(example, response).follow_instruction_list
        random.seed(inp["key"])
        loose = utils.test_instruction_following_loose(example, response).follow_instruction_list
    finally:
        random.setstate(state)
    return strict, loose


# ---------------------------------------------------------------------------------------------- data + scoring
def load_inputs(data_dir: str | None = None, path: str | Path | None = None) -> list[dict]:
    """The official input rows; a row without key/prompt/instruction_id_list/kwargs is an error naming it."""
    path = Path(path) if path else require_file(data_dir, FILE, NAME)
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
    nltk_data: str | None = None,
    inputs: list[dict] | None = None,
    skip_unmatched: bool = False,
) -> Scored:
    """Score {"prompt", "response"} rows (a "output" field is accepted for "response"); prompts are matched
    exactly, as the official scorer does. `skip_unmatched`: leave out (and count) rows whose prompt is not an
    input prompt, instead of stopping: the official GPT-4 response file has one such row."""
    inputs = inputs if inputs is not None else load_inputs(data_dir)
    by_prompt = {r["prompt"]: r for r in inputs}
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    verdicts, unmatched = [], []
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
                f"prediction {row}: prompt {p['prompt'][:80]!r}... is not an IFEval input prompt "
                "(prompts must match exactly; --skip-unmatched leaves such rows out and counts them)"
            )
        strict, loose = check(inp, response, nltk_data, data_dir)
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
    extra = {m: sum(v) / len(v) if v else float("nan") for m, v in values.items()}
    if unmatched:
        extra["unmatched_rows"] = unmatched
        log.warning(
            "%d prediction(s) skipped: prompt not an IFEval input (rows %s)", len(unmatched), unmatched
        )
    metrics = make_metrics(
        NAME, "prompt_level_loose_acc", values["prompt_level_loose_acc"], PROTOCOL,
        groups=per_instruction(verdicts), extra=extra,
    )  # fmt: skip
    metrics["counts"]["unmatched"] = len(unmatched)
    return Scored(metrics, verdicts)


def per_instruction(verdicts: list[dict]) -> dict[str, list[float]]:
    """Loose verdicts grouped by instruction id, from IFEval-format verdicts (``instruction_id_list``,
    ``follow_instruction_list_loose``): the official report's per-instruction "tier 1" lines
    (``evaluation_lib.print_report``), as ``make_metrics`` groups; IFBench's verdicts have the same form."""
    groups: dict[str, list[float]] = {}
    for v in verdicts:
        for iid, ok in zip(v["instruction_id_list"], v["follow_instruction_list_loose"]):
            groups.setdefault(iid, []).append(float(ok))
    return dict(sorted(groups.items()))


def run(cfg: IFEvalConfig, backend=None) -> dict:
    """Generate responses, save them in the official format (responses.jsonl), score strict and loose."""
    inputs = take(load_inputs(cfg.data_dir), cfg.max_examples, cfg.seed)
    if needs_punkt(inputs):
        ensure_punkt(cfg.nltk_data, cfg.data_dir)  # fail before generating, not after
    examples = [{"id": str(r["key"]), "text": r["prompt"]} for r in inputs]
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 2048)
    preds = generate_predictions(cfg, examples, lambda e, chat: (e["text"], ""), params, backend)
    official = [{"prompt": p["text"], "response": p["output"]} for p in preds]
    write_jsonl(Path(cfg.out_dir) / "responses.jsonl", official)
    scored = score_predictions(official, cfg.data_dir, nltk_data=cfg.nltk_data, inputs=inputs)
    return finish(cfg, scored, cfg.sampling(params))
