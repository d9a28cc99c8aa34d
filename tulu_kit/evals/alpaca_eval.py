"""AlpacaEval 1 and 2: outputs for 805 instructions, judged pairwise against a reference model (`eval/alpaca_eval.ipynb`).

Li et al. 2023 (tatsu-lab/alpaca_eval); length control: Dubois et al. 2024, "Length-Controlled AlpacaEval: A
Simple Way to Debias Automatic Evaluators" (arXiv 2404.04475). Generation as open-instruct
(`eval/alpaca_farm/run_eval.py`): the instruction as the user turn, greedy, up to 2048 (Tulu 2) / 8192 new tokens.
The outputs are always saved as `model_outputs.json` in alpaca_eval's format ({instruction, output, generator,
dataset}), so `alpaca_eval --model_outputs ...` can judge them later with the official library.

Judging here follows alpaca_eval's `weighted_alpaca_eval_gpt4_turbo` annotator, against any OpenAI-compatible
endpoint (OpenAI, a local `vllm serve`): the `alpaca_eval_clf_gpt4_turbo` prompt with the reference as model "m"
and ours as "M" (order randomized per instruction, seeded, and undone), one token with top-5 logprobs, and the
preference P(ours) = P(M) / (P(m) + P(M)). Win rate = 100 x mean preference. Version 1 compares with
text-davinci-003, version 2 with gpt4_1106_preview and adds the length-controlled win rate, computed by
alpaca_eval's own code (`alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`, the `eval` extra) on the
judged rows in alpaca_eval's annotation format. That function downloads two inputs at run time from the Hub
dataset `tatsu-lab/alpaca_eval` (`df_gamed.csv`, which holds the per-instruction difficulty and the gamed
baselines' annotations); where they cannot be had (offline, no cache) the LC figure is null and metrics.json says
why -- never an approximation. With no judge configured, a clear message is logged and only the outputs are
written.
"""

from __future__ import annotations

import logging
import math
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
from tulu_kit.evals.data import require_file
from tulu_kit.evals.judges import NO_JUDGE, OpenAIJudge, make_judge
from tulu_kit.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

NAME = "alpaca_eval"
DATA = "alpaca_eval/results"  # under the data root: what the score depends on (hashed into the manifest)
REFERENCES = {1: "text_davinci_003", 2: "gpt4_1106_preview"}
FILE = "alpaca_eval/results/{ref}/model_outputs.json"
URL = "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/main/results/{ref}/model_outputs.json"
PROTOCOL = {
    "shots": 0,
    "prompt": "the instruction as the user turn",
    "decoding": "greedy, 2048 new tokens (Tulu 2) / 8192 (Tulu 3)",
    "extraction": "the whole output, judged pairwise vs the reference (weighted_alpaca_eval_gpt4_turbo protocol)",
    "metric": "win rate % vs text-davinci-003 (v1) / gpt4_1106_preview (v2, + length-controlled win rate)",
    "source": "open-instruct eval/alpaca_farm/run_eval.py; tatsu-lab/alpaca_eval",
    "data": FILE,
}
# alpaca_eval 0.6.6 evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt; compared word for word
# (system and user parts) with that file of the released wheel.
SYSTEM = (
    "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based "
    "on the quality of their responses to a given instruction. This process will be used to create a leaderboard "
    "reflecting the most accurate and human-preferred answers."
)
TEMPLATE = """I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": \"\"\"{instruction}\"\"\",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "m",
        "output": \"\"\"{output_1}\"\"\"
    }},
    {{
        "model_identifier": "M",
        "output": \"\"\"{output_2}\"\"\"
    }}
}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier"""  # noqa: E501


@dataclass
class AlpacaEvalConfig(EvalConfig):
    """AlpacaEval settings: version (1 or 2), the judge endpoint, the name the outputs are saved under."""

    out_dir: str = "../runs/lab/eval_alpaca_eval"
    chat: bool = True  # the instruction is one user turn
    version: Literal[1, 2] = (
        2  # 1: vs text-davinci-003; 2: vs gpt4_1106_preview, + length-controlled win rate
    )
    generator: str = "tulu_kit_model"  # name written into model_outputs.json
    judge_url: str = ""  # OpenAI-compatible base URL of the judge ("" = save outputs only)
    judge_model: str = (
        "gpt-4-1106-preview"  # the judge model name at that endpoint (alpaca_eval 2's annotator)
    )
    judge_api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the judge's API key


CONFIG = AlpacaEvalConfig


def load_reference(data_dir: str | None, version: int) -> list[dict]:
    """The reference model's outputs: 805 {instruction, output, generator, dataset} rows."""
    path = require_file(data_dir, FILE.format(ref=REFERENCES[version]), NAME)
    rows = read_json(path)
    for n, r in enumerate(rows):
        if not isinstance(r, dict) or "instruction" not in r or "output" not in r:
            raise ValueError(f"{path}: item {n}: needs 'instruction' and 'output'")
    return rows


def preference(judge: OpenAIJudge, instruction: str, ours: str, ref: str, swap: bool) -> float:
    """P(ours is better) in [0, 1] from the judge's m/M logprobs; `swap` puts ours first."""
    out_1, out_2 = (ours, ref) if swap else (ref, ours)
    prompt = TEMPLATE.format(instruction=instruction, output_1=out_1, output_2=out_2)
    probs = judge.token_probs(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}], ["m", "M"]
    )
    total = probs["m"] + probs["M"]
    p_second = probs["M"] / total if total > 0 else 0.5
    return 1.0 - p_second if swap else p_second


LC_METHOD = (
    "alpaca_eval {version} metrics.glm_winrate.get_length_controlled_winrate, GLM length_controlled_v1 "
    "(np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline - 1, 5-fold LogisticRegressionCV, "
    "regularised toward the gamed baselines with lambda 0.2; df_gamed.csv from the Hub dataset tatsu-lab/alpaca_eval)"
)
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def annotation_rows(
    preds: list[dict], prefs: list[float], ref: dict[str, dict], generator: str
) -> list[dict]:
    """The judged rows in alpaca_eval's annotation format: output_1 the reference, output_2 ours,
    preference = 1 + P(ours) in [1, 2], `index` the instruction's position in the 805-item eval set (the key of
    alpaca_eval's per-instruction difficulty)."""
    return [
        {
            "instruction": p["instruction"],
            "output_1": ref[p["instruction"]]["output"],
            "generator_1": ref[p["instruction"]].get("generator", "reference"),
            "output_2": p["output"],
            "generator_2": generator,
            "annotator": ANNOTATOR,
            "preference": 1.0 + pref,
            "index": ref[p["instruction"]]["index"],
        }
        for p, pref in zip(preds, prefs)
    ]


def official_win_rates(annotations: list[dict], length_controlled: bool = True) -> dict:
    """alpaca_eval's own metrics of annotation rows: `win_rate`, `standard_error`, `n_wins`, `n_wins_base`,
    `n_draws`, `n_total`, `discrete_win_rate` (its `get_winrate`) and, when `length_controlled`,
    `length_controlled_winrate` and `lc_standard_error` (its `get_length_controlled_winrate`), with `lc_method`.

    Where the LC inputs cannot be fetched, `length_controlled_winrate` is None and `lc_error` says why.
    """
    import warnings
    from importlib.metadata import version

    import pandas as pd

    try:
        with warnings.catch_warnings():  # alpaca_eval imports pkg_resources (deprecated)
            warnings.simplefilter("ignore")
            from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate
            from alpaca_eval.metrics.winrate import get_winrate
    except ImportError as e:
        raise ImportError(
            f"AlpacaEval's win rates are computed by the alpaca_eval package ({e}); install the eval extra: "
            "pip install -c constraints.txt -e '.[eval]'"
        ) from e
    # the frame's index is the eval-set position: alpaca_eval reads it back as the "index" column
    df = pd.DataFrame([{k: v for k, v in a.items() if k != "index"} for a in annotations])
    df.index = pd.Index([int(a["index"]) for a in annotations], name=None)
    out = {k: _plain(v) for k, v in get_winrate(df).items()}
    if not length_controlled:
        return out
    out["lc_method"] = LC_METHOD.format(version=version("alpaca_eval"))
    try:
        lc = get_length_controlled_winrate(df, save_weights_dir=None, is_warn_extreme_changes=False)
    except Exception as e:  # noqa: BLE001 -- the Hub download (offline, no cache) or the fit
        why = (
            f"{type(e).__name__}: {e} -- alpaca_eval's LC fit needs df_gamed.csv from the Hub dataset "
            "tatsu-lab/alpaca_eval at run time; offline, fetch it first into the HF cache: "
            "hf download tatsu-lab/alpaca_eval df_gamed.csv --repo-type dataset"
        )
        out.update(length_controlled_winrate=None, lc_standard_error=None, lc_error=why)
        log.warning("AlpacaEval 2 LC win rate not computed: %s", out["lc_error"])
        return out
    out["length_controlled_winrate"] = _plain(lc["length_controlled_winrate"])
    out["lc_standard_error"] = _plain(lc["lc_standard_error"])
    return out


def _plain(x):
    """numpy scalars as Python numbers (metrics.json is JSON); NaN as None."""
    x = x.item() if hasattr(x, "item") else x
    return None if isinstance(x, float) and math.isnan(x) else x


def score_predictions(
    preds: list[dict],
    data_dir: str | None = None,
    judge: OpenAIJudge | None = None,
    version: int = 2,
    seed: int = 42,
    generator: str = "tulu_kit_model",
) -> Scored:
    """Judge {instruction, output} rows (alpaca_eval's model_outputs format) against the reference outputs."""
    ref = {r["instruction"]: {**r, "index": i} for i, r in enumerate(load_reference(data_dir, version))}
    for n, p in enumerate(preds, 1):
        if p.get("instruction") not in ref or not isinstance(p.get("output"), str):
            raise ValueError(f"prediction {n}: needs an AlpacaEval 'instruction' and an 'output' string")
    if judge is None:
        log.warning(NO_JUDGE)
        metrics = make_metrics(NAME, "win_rate", [], PROTOCOL, extra={"judged": False, "message": NO_JUDGE})
        return Scored(metrics, [])
    rng = random.Random(seed)
    verdicts, prefs = [], []
    for p in preds:
        r = ref[p["instruction"]]
        pref = preference(judge, p["instruction"], p["output"], r["output"], swap=rng.random() < 0.5)
        prefs.append(pref)
        verdicts.append({"instruction": p["instruction"], "preference": pref, "reference": r["generator"]})
    extra = {"judged": True, "version": version, "reference": REFERENCES[version], "judge": judge.model,
             "judge_endpoint": judge.url}  # fmt: skip
    official = official_win_rates(
        annotation_rows(preds, prefs, ref, generator), length_controlled=version == 2
    )
    extra["win_rate"] = official["win_rate"]
    extra["counts_official"] = {k: official[k] for k in ("n_wins", "n_wins_base", "n_draws", "n_total")}
    if version == 2:
        extra["length_controlled_win_rate"] = official["length_controlled_winrate"]
        extra["length_controlled_stderr"] = official["lc_standard_error"]
        extra["lc_method"] = official["lc_method"]
        if "lc_error" in official:
            extra["lc_error"] = official["lc_error"]
    values = [100.0 * x for x in prefs]
    return Scored(make_metrics(NAME, "win_rate", values, PROTOCOL, extra=extra), verdicts)


def run(cfg: AlpacaEvalConfig, backend=None) -> dict:
    """Generate outputs, save model_outputs.json, judge them when a judge is configured, write metrics.json."""
    reference = load_reference(cfg.data_dir, cfg.version)
    examples = [
        {"id": str(i), "instruction": r["instruction"], "dataset": r.get("dataset", "")}
        for i, r in enumerate(reference)
    ]
    examples = take(examples, cfg.max_examples, cfg.seed)
    params = GenParams(max_new_tokens=cfg.max_new_tokens or 2048)
    preds = generate_predictions(cfg, examples, lambda e, chat: (e["instruction"], ""), params, backend)
    outputs = [
        {
            "instruction": p["instruction"],
            "output": p["output"],
            "generator": cfg.generator,
            "dataset": p["dataset"],
        }
        for p in preds
    ]
    atomic_write_json(Path(cfg.out_dir) / "model_outputs.json", outputs)
    judge = make_judge(
        cfg.judge_url, cfg.judge_model, cfg.judge_api_key_env, Path(cfg.out_dir) / "judge_cache.jsonl"
    )
    return finish(
        cfg,
        score_predictions(outputs, cfg.data_dir, judge, cfg.version, cfg.seed, cfg.generator),
        cfg.sampling(params),
    )
