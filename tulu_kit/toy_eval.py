"""The per-stage table of the toy world: Tulu 3's base → SFT → DPO → RL table in miniature, with seed bands.

Each stage's model (``quickstart/model`` is the base) is scored on the toy world's held-out benchmarks
(:func:`tulu_kit.data.synthetic.write_toy_benchmarks`, written by the data stage) by the kit's own eval code:
``tulu_kit.evals.gsm8k`` (exact match of the last number), ``ifeval`` (lm-eval's checkers, prompt-level loose
accuracy) and ``mmlu`` (the letter with the highest log-probability), in chat mode, 0-shot. Results go to
``<run_dir>/toy_eval/<stage>/<benchmark>/metrics.json`` as any eval stage writes them, and are re-used while the
model folder is unchanged.

:func:`seed_table` sets one run (± stderr, labelled so) or several seeds of one recipe (mean ± sd over seeds)
side by side: rows = benchmarks, columns = stages, each with its change from the model it started from, as the
stage recorded it (:func:`stage_starts`; in the quickstart, :data:`STARTS`: PPO and GRPO both start from DPO).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd

# stage folder -> column label, in pipeline order
COLUMNS = {"quickstart": "base", "sft": "SFT", "dpo": "DPO", "ppo": "PPO", "grpo": "GRPO", "merge": "merge"}
# stage -> the stage whose model it starts from in the quickstart recipe (merge: the RL policy it soups with SFT);
# a run's own are read from its stage folders (stage_starts)
STARTS = {"sft": "quickstart", "dpo": "sft", "ppo": "dpo", "grpo": "dpo", "merge": "ppo"}
# toy benchmark -> (row label, eval module, max_new_tokens)
BENCHMARKS = {
    "gsm8k": ("arithmetic (GSM8K scorer, exact match)", 24),
    "ifeval": ("instructions (IFEval checkers, prompt loose)", 40),
    "mmlu": ("facts (MMLU log-likelihood, accuracy)", None),
}
# the data stage writes the held-out benchmark files to <data out_dir>/toy_benchmarks
TOY_DIR = "toy_benchmarks"
# toy benchmark -> what its subscores are: the kinds table shows each stage per kind (IFEval: per instruction id)
KINDS = {"ifeval": "instruction"}
# part of the cached results' stamps of KINDS: one scored by an older version of this module is scored again
SCORES_VERSION = "2"  # 2: the subscores of KINDS kept


def _model_stamp(model_dir: Path) -> str:
    files = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    return ";".join(f"{f.name}:{f.stat().st_mtime_ns}:{f.stat().st_size}" for f in files)


def _data_stamp(data_dir: Path, benchmark: str) -> str:
    """A digest of one toy benchmark's files: a result scored on other questions is not this one's."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in (data_dir / benchmark).rglob("*") if p.is_file()):
        digest.update(path.relative_to(data_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def evaluate_stage(model_dir: Path, data_dir: Path, out_dir: Path, batch_size: int = 100,
                   benchmarks: tuple[str, ...] = tuple(BENCHMARKS)) -> dict[str, dict]:  # fmt: skip
    """Score one model on the toy benchmarks (all three, or ``benchmarks``); results cached beside a stamp of the
    model's weights and of the benchmark's files (a model folder without weight files is scored every time)."""
    from tulu_kit.evals.core import get_benchmark

    out: dict[str, dict] = {}
    weights = _model_stamp(model_dir)
    for name in benchmarks:
        max_new_tokens = BENCHMARKS[name][1]
        stamp = f"{weights};data:{_data_stamp(data_dir, name)}"
        stamp = f"v{SCORES_VERSION};{stamp}" if name in KINDS else stamp
        bench_dir = out_dir / name
        stamp_file = bench_dir / "model_stamp.txt"
        if not (
            weights
            and stamp_file.is_file()
            and stamp_file.read_text() == stamp
            and (bench_dir / "metrics.json").is_file()
        ):
            shutil.rmtree(bench_dir, ignore_errors=True)  # a stale result of an older model: not resumed
            module = get_benchmark(name)
            cfg = module.CONFIG(
                model=str(model_dir), out_dir=str(bench_dir), data_dir=str(data_dir), chat=True, n_shot=0,
                max_examples=None, batch_size=batch_size, max_new_tokens=max_new_tokens,
            )  # fmt: skip
            module.run(cfg)
            stamp_file.write_text(stamp)
        metrics = json.loads((bench_dir / "metrics.json").read_text())
        out[name] = {"score": metrics["score"], "stderr": metrics["stderr"], "n": metrics["counts"]["n"]}
        if name in KINDS:
            per = metrics["counts"]["per_group"]
            out[name]["kinds"] = {k: _kind(v, per[k]) for k, v in metrics["subscores"].items()}
    return out


def _kind(score: float, n: int) -> dict:
    """A kind's share of 0/1 verdicts with its standard error (the sample sd of those verdicts / sqrt(n), as
    :func:`tulu_kit.evals.core.mean_stderr` gives a benchmark's)."""
    from tulu_kit.evals.core import mean_stderr

    correct = round(score * n)
    return {"score": score, "stderr": mean_stderr([1.0] * correct + [0.0] * (n - correct))[1], "n": n}


def _short(bench: str) -> str:
    """A toy benchmark's row label without its scorer: "instructions"."""
    return BENCHMARKS[bench][0].split(" (")[0]


def _toy_benchmarks(data_dir: str | Path) -> Path:
    """``data_dir`` when it holds the toy benchmark files, else an error saying who writes them."""
    data_dir = Path(data_dir)
    if not (data_dir / "gsm8k" / "test.jsonl").is_file():
        raise FileNotFoundError(
            f"{data_dir}: no toy benchmarks (notebook 01 / the data stage writes them with toy_benchmarks > 0)"
        )
    return data_dir


def own_benchmarks(run_dir: str | Path) -> str:
    """``<run_dir>/data/toy_benchmarks`` when the run's data stage wrote the toy benchmarks there, else ""."""
    data_dir = Path(run_dir) / "data" / TOY_DIR
    return str(data_dir) if (data_dir / "gsm8k" / "test.jsonl").is_file() else ""


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None) -> dict[str, dict[str, dict]]:
    """Score every stage of ``run_dir`` that wrote a model (``<stage>/model``) in :data:`COLUMNS`; writes
    ``<run_dir>/toy_eval/scores.json`` and returns ``{stage: {benchmark: {"score", "stderr", "n"}}}``, plus
    ``"kinds": {kind: {"score", "stderr", "n"}}`` for the benchmarks of :data:`KINDS`."""
    from tulu_kit.io import atomic_write_json

    run_dir = Path(run_dir)
    data_dir = _toy_benchmarks(data_dir or run_dir / "data" / TOY_DIR)
    scores = {}
    for stage in COLUMNS:
        model_dir = run_dir / stage / "model"
        if (model_dir / "config.json").is_file():
            scores[stage] = evaluate_stage(model_dir, data_dir, run_dir / "toy_eval" / stage)
    atomic_write_json(run_dir / "toy_eval" / "scores.json", scores)
    return scores


def score_models(models: dict[str, str | Path], data_dir: str | Path, out_dir: str | Path) -> dict[str, dict]:
    """Several models (``{label: model folder}``) on the toy world's held-out benchmarks in ``data_dir``, each
    cached under ``<out_dir>/<label>`` like a stage (notebook 03: the base, LoRA and full fine-tuning)."""
    data_dir = _toy_benchmarks(data_dir)
    return {label: evaluate_stage(Path(m), data_dir, Path(out_dir) / label) for label, m in models.items()}


def models_table(scores: dict[str, dict]) -> pd.DataFrame:
    """:func:`score_models`' result as a table: rows = benchmarks, columns = models, each score ± its stderr."""
    return pd.DataFrame(
        {
            label: {BENCHMARKS[b][0]: f"{v['score']:.3f} ± {v['stderr']:.3f}" for b, v in per.items()}
            for label, per in scores.items()
        }
    )


def relative_lines(scores: dict[str, dict], model: str, reference: str, tolerance: float = 0.10) -> list[str]:
    """One sentence per benchmark, computed from ``scores``: ``model``'s held-out accuracy as a share of
    ``reference``'s, and whether it is within ``tolerance`` of it (the stderrs say how far to trust the gap)."""
    lines = []
    for bench, ref in scores[reference].items():
        got, want = scores[model][bench]["score"], ref["score"]
        share = f"{got / want:.0%} of it" if want else f"{reference} scores 0"
        verdict = "within" if got >= (1 - tolerance) * want else "not within"
        lines.append(
            f"{_short(bench)}: {model} {got:.3f} vs {reference} {want:.3f} "
            f"({share}, ± {scores[model][bench]['stderr']:.3f} / ± {ref['stderr']:.3f}): {verdict} {tolerance:.0%}"
        )
    return lines


def read_scores(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / "toy_eval" / "scores.json")


def _band(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def stage_starts(run_dir: str | Path) -> dict[str, str]:
    """stage -> the stage of ``run_dir`` whose model it started from, as each stage recorded it: the ``model`` of
    ``<stage>/config.json``; for a merge, the last of the ``models`` in ``merge/metrics.json`` (the policy it soups
    with the first), or of the recipe's (``config.yaml``) for a merge that did not record them. A start outside this
    run's stage folders (a Hub id, another run's model) is left out: no Δ. A recorded path that no longer exists
    (the run folder was moved since) is matched by the run folder's name; a copy whose original is still there
    gets no Δ."""
    run_dir = Path(run_dir)
    here = {run_dir.resolve()}
    starts = {}
    for stage in COLUMNS:
        if stage == "merge":
            models = _record(run_dir / stage / "metrics.json").get("models")
            if not models:
                recipe = _record(run_dir / "config.yaml").get("stages")
                merge = recipe.get(stage) if isinstance(recipe, dict) else None
                models = merge.get("models") if isinstance(merge, dict) else None
            model = models[-1] if isinstance(models, list) and models else None
        else:
            model = _record(run_dir / stage / "config.json").get("model")
        path = Path(model) if isinstance(model, str) and model else None
        if not (path and path.name == "model" and path.parent.name in COLUMNS and path.parent.name != stage):
            continue
        root = path.parent.parent
        if root.resolve() in here or (
            not path.exists() and root.name in (run_dir.name, run_dir.resolve().name)
        ):
            starts[stage] = path.parent.name
    return starts


def run_starts(runs: list[Path]) -> dict[str, str]:
    """The starts (:func:`stage_starts`) on which every seed run agrees: a Δ across seeds is from one column."""
    each = [stage_starts(r) for r in runs]
    return {s: t for s, t in each[0].items() if all(other.get(s) == t for other in each[1:])} if each else {}


def _record(path: Path) -> dict:
    """A stage's JSON record or the run's config.yaml, {} when absent or not a mapping (then: no Δ, not no report)."""
    if not path.is_file():
        return {}
    if path.suffix == ".yaml":
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            return {}
    else:
        data = read_json(path)
    return data if isinstance(data, dict) else {}


def seed_table(per_seed: list[dict], starts: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table of strings, table of numbers) from one ``scores.json`` per seed: rows = toy benchmarks, columns =
    stages ("mean ± sd" over seeds, or "score ± stderr" for one seed) each followed by its Δ from its start
    stage (``starts``: :func:`run_starts`; the quickstart's are :data:`STARTS`), where that stage is an earlier
    column. The numeric table has ``<column>`` (mean), ``<column> sd`` and ``Δ <column>`` columns."""
    per_seed = [s for s in per_seed if s]
    stages = [s for s in COLUMNS if per_seed and all(s in run for run in per_seed)]
    one = len(per_seed) == 1
    text_rows, num_rows = [], []
    for bench, (label, _) in BENCHMARKS.items():
        text, num = {"benchmark": label}, {"benchmark": label}
        means: dict[str, float] = {}
        for stage in stages:
            column = COLUMNS[stage]
            values = [run[stage][bench]["score"] for run in per_seed]
            mean, sd = _band(values)
            if one:
                sd = per_seed[0][stage][bench]["stderr"] or 0.0
            text[column] = f"{mean:.3f} ± {sd:.3f}"
            num[column], num[f"{column} sd"] = mean, sd
            if starts.get(stage) in means:
                delta = mean - means[starts[stage]]
                text[f"Δ {column}"] = f"{delta:+.3f}"
                num[f"Δ {column}"] = delta
            means[stage] = mean
        text_rows.append(text)
        num_rows.append(num)
    return pd.DataFrame(text_rows), pd.DataFrame(num_rows)


def kinds_table(per_seed: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each stage per kind of question (:data:`KINDS`: IFEval's instruction ids; each toy question asks one), from
    one ``scores.json`` per seed: (table of strings, table of numbers), one row per kind with how many held-out
    questions ask it, columns = stages, each the kind's accuracy (mean ± sd over seeds, or the one seed's share ±
    its standard error, as :func:`seed_table`). The most asked kinds first: they weigh most in the score. A kind a
    seed or stage did not score is "n/a" there; empty when a stage's scores have no kinds (an older result)."""
    per_seed = [s for s in per_seed if s]
    stages = [s for s in COLUMNS if per_seed and all(s in run for run in per_seed)]
    text_rows, num_rows = [], []
    for bench, kind in KINDS.items():
        cells = [run[st].get(bench, {}).get("kinds") for run in per_seed for st in stages]
        if not stages or not all(cells):
            continue
        asked: dict[str, int] = {}
        for kinds in cells:
            for name, v in kinds.items():
                asked.setdefault(name, v["n"])
        for name in _most_asked(asked):
            text = {"benchmark": _short(bench), kind: name, "questions": asked[name]}
            num = dict(text)
            for stage in stages:
                got = [run[stage][bench]["kinds"].get(name) for run in per_seed]
                column = COLUMNS[stage]
                if None in got:
                    text[column], num[column], num[f"{column} sd"] = "n/a", None, None
                    continue
                mean, sd = _band([g["score"] for g in got])
                if len(got) == 1:
                    sd = got[0]["stderr"]
                text[column] = f"{mean:.3f} ± {sd:.3f}"
                num[column], num[f"{column} sd"] = mean, sd
            text_rows.append(text)
            num_rows.append(num)
    return pd.DataFrame(text_rows), pd.DataFrame(num_rows)


def _most_asked(asked: dict[str, int]) -> list[str]:
    """Kinds by how many questions ask them, most first (ties by name): the table's order and the sentence's pick."""
    return sorted(asked, key=lambda k: (-asked[k], k))


def kinds_lines(per_seed: list[dict], stage: str = "sft") -> list[str]:
    """One sentence per benchmark of :data:`KINDS`, computed from the scores: how much of the benchmark its most
    asked kind is, and that kind's accuracy after ``stage`` (mean over seeds) beside the other kinds' together
    (weighted by how many questions ask each). None where the seeds scored different kinds."""
    per_seed = [s for s in per_seed if s and stage in s]
    lines = []
    for bench, kind in KINDS.items():
        if not per_seed or not all(run[stage].get(bench, {}).get("kinds") for run in per_seed):
            continue
        kinds = per_seed[0][stage][bench]["kinds"]
        asked = {k: v["n"] for k, v in kinds.items()}
        if any({k: v["n"] for k, v in run[stage][bench]["kinds"].items()} != asked for run in per_seed):
            continue  # seeds scored on different held-out files: no sentence pools them
        top, *rest = _most_asked(asked)
        mean = sum(run[stage][bench]["kinds"][top]["score"] for run in per_seed) / len(per_seed)
        line = (
            f"{_short(bench)}: the most asked {kind}, {top}, is {asked[top]} of the {sum(asked.values())} held-out "
            f"questions; after {COLUMNS[stage]} it scores {mean:.3f}"
        )
        if rest:
            rest_n = sum(asked[k] for k in rest)
            others = sum(
                sum(run[stage][bench]["kinds"][k]["score"] * asked[k] for k in rest) / rest_n
                for run in per_seed
            ) / len(per_seed)
            line += f", the other {len(rest)} together {others:.3f}"
        lines.append(line + ("" if len(per_seed) == 1 else f" (mean of {len(per_seed)} seeds)") + ".")
    return lines


def refresh(runs: list[Path]) -> None:
    """Re-score each seed run (on its own ``data/toy_benchmarks``) whose ``scores.json`` an older version of the
    kit wrote (a benchmark of :data:`KINDS` without its kinds), so that the tables are not left without its rows;
    an up-to-date run is left as it is."""
    for run in runs:
        scores = read_scores(run)
        if any(b in KINDS and "kinds" not in v for stage in scores.values() for b, v in stage.items()):
            evaluate_run(run)


def band_note(n_seeds: int, starts: dict[str, str], numbers: pd.DataFrame) -> str:
    """The line under the table: what ± is, and where each Δ of ``numbers`` (:func:`seed_table`) is from."""
    shown = [s for s in COLUMNS if s in starts and f"Δ {COLUMNS[s]}" in numbers.columns]
    froms = ", ".join(f"{COLUMNS[s]} from {COLUMNS[starts[s]]}" for s in shown)
    start = f" Δ: the change from the model the stage started from ({froms})." if froms else ""
    if n_seeds == 1:
        return "one seed: each cell is the score ± its standard error over the held-out questions." + start
    return f"{n_seeds} seeds: each cell is the mean ± the standard deviation over seeds." + start


def seed_runs(run_dir: str | Path) -> list[Path]:
    """The seed runs a multi-seed recipe wrote beside ``run_dir`` (``<base>/seeds.json``), else ``[run_dir]``; only
    those that ran the same recipe as ``run_dir`` (its ``config.yaml`` but for the seed and the run folder): while
    ``make sanity`` runs again with other settings, a seed not yet rerun is another experiment, not a band."""
    run_dir = Path(run_dir)
    listing = run_dir.parent / "seeds.json"
    if listing.is_file():
        runs = [Path(p) for p in json.loads(listing.read_text())["runs"]]
        if run_dir.resolve() in [p.resolve() for p in runs]:
            ours = _recipe_of(run_dir)
            return [r for r in runs if r.resolve() == run_dir.resolve() or _recipe_of(r) in (ours, None)]
    return [run_dir]


def _recipe_of(run_dir: Path) -> dict | None:
    """A run's resolved recipe (``config.yaml``) with its run folder and every ``seed`` taken out, or None when it
    has none (nothing ran there through the runner)."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text())
    root = str(config.get("run_dir", run_dir))

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("seed", "run_dir")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(root, "${run_dir}") if isinstance(value, str) else value

    return strip(config)


def seed_results(runs: list[Path]) -> dict:
    """Every toy-world table over the seed runs (each brought up to date first, :func:`refresh`): the per-stage
    table (``table``, its ``numbers``, its ``note``), the stages by kind of question (``kinds``, ``kinds_numbers``,
    their sentences ``kinds_lines``) and the RL sanity check (``rl``); {} when no run was scored on the toy world
    (no table of zero seeds). The report and ``make sanity``'s page both set out these."""
    refresh(runs)
    scores = {r: read_scores(r) for r in runs}
    scored = [r for r in runs if scores[r]]
    if not scored:
        return {}
    per_seed = [scores[r] for r in scored]
    starts = run_starts(scored)
    table, numbers = seed_table(per_seed, starts)
    kinds, kinds_numbers = kinds_table(per_seed)
    return {
        "table": table,
        "numbers": numbers,
        "note": band_note(len(per_seed), starts, numbers),
        "kinds": kinds,
        "kinds_numbers": kinds_numbers,
        "kinds_lines": kinds_lines(per_seed),
        "rl": rl_table([read_json(Path(r) / "toy_eval" / "rl.json") for r in runs]),
    }


def seed_page(runs: list[Path]) -> tuple[str, dict]:
    """``make sanity``'s page (markdown) and its numbers from the seed runs' folders (:func:`seed_results`); ("",
    {}) when no run was scored on the toy world."""
    got = seed_results(runs)
    if not got:
        return "", {}
    page = got["table"].to_markdown(index=False, disable_numparse=True) + f"\n\n{got['note']}\n"
    if not got["kinds"].empty:
        kinds = got["kinds"].to_markdown(index=False, disable_numparse=True)
        page += f"\n## By kind of question\n\n{kinds}\n"
        page += "".join(f"\n{line}\n" for line in got["kinds_lines"])
    if not got["rl"].empty:
        rl_text = got["rl"].to_markdown(index=False, disable_numparse=True)  # keeps the signs of the Δ
        page += f"\n## The RL sanity check\n\n{rl_text}\n\n{RL_NOTE}\n"
    return page, {"note": got["note"], "rows": got["numbers"].to_dict("records"),
                  "rl": got["rl"].to_dict("records"), "kinds": got["kinds_numbers"].to_dict("records")}  # fmt: skip


# ------------------------------------------------------------------------------------------------ RL sanity check
RL_STAGES = {"ppo": ("PPO", "response_length"), "grpo": ("GRPO", "max_completion_length")}
RL_SAMPLES = 4  # replies sampled per training prompt
RL_NOTE = (
    "frozen: the stage's start model, which is what the same run at learning rate 0 keeps (the control); trained: "
    "its policy. Sampled: the share of verified-correct replies, 4 per training prompt at the stage's temperature; "
    "greedy: one reply per prompt. KL: the last logged KL to the reference."
)


def rl_accuracy(model_dir: str | Path, rows: list[dict], temperature: float, max_new_tokens: int,
                samples: int = RL_SAMPLES, seed: int = 0) -> dict:  # fmt: skip
    """Greedy and sampled accuracy (the verifiable reward's pass) of a model on RLVR ``rows``, each prompted as the
    RL stages prompt it (:func:`tulu_kit.training.rlvr_prompt`: without a trailing reference answer): the RL sanity
    check's measure, sampled at the stage's own temperature."""
    import torch

    from tulu_kit.data.onpolicy import sample_replies
    from tulu_kit.models import load_model, load_tokenizer
    from tulu_kit.rewards import verifiable_reward
    from tulu_kit.training import rlvr_prompt

    tokenizer, model = load_tokenizer(str(model_dir)), load_model(str(model_dir)).eval()
    prompts = [rlvr_prompt(r) for r in rows]
    sampled = sample_replies(model, tokenizer, prompts, samples, temperature, max_new_tokens, seed)
    greedy = []
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    for i in range(0, len(texts), 64):
        enc = tokenizer(texts[i : i + 64], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        greedy += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    passed = [[verifiable_reward(r, x) >= 1.0 for x in xs] for r, xs in zip(rows, sampled)]
    return {
        "sampled": sum(map(sum, passed)) / (len(rows) * samples),
        "greedy": sum(verifiable_reward(r, x) >= 1.0 for r, x in zip(rows, greedy)) / len(rows),
        "n_prompts": len(rows),
        "samples": samples,
    }


def rl_line(stage: str, frozen: dict, trained: dict) -> str:
    """The RL sanity check of one run in a sentence computed from its two :func:`rl_accuracy` results: whether
    the sampled accuracy on the training prompts rose or fell by more than two binomial standard errors of the
    difference over the replies, else that it moved less. For these prompts that bound is, if anything, wide (both
    models answer the same prompts); it says nothing about new prompts, which the held-out scores measure."""
    a, b = frozen["sampled"], trained["sampled"]
    samples = frozen.get("samples", RL_SAMPLES)
    noise = 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / (frozen["n_prompts"] * samples))
    a, b, noise = round(a, 3), round(b, 3), round(noise, 3)  # decided on the numbers as printed
    moved = (
        "rose by more than" if b - a > noise else "fell by more than" if a - b > noise else "moved less than"
    )
    return (
        f"{stage}: sampled accuracy on its {frozen['n_prompts']} training prompts ({samples} replies each) "
        f"{moved} two standard errors ({noise:.3f}): {a:.3f} at its start (the frozen control), {b:.3f} trained; "
        f"greedy {frozen['greedy']:.3f} -> {trained['greedy']:.3f}."
    )


# the toy world's held-out sums the RL notebooks score: the first questions of the held-out split, those the report
# scores at the data stage's default toy_benchmarks (100)
HELDOUT_N = 100


def heldout_sums(model_dir: str | Path, out_dir: str | Path, label: str) -> pd.DataFrame:
    """The toy world's :data:`HELDOUT_N` held-out arithmetic questions, answered greedily by ``model_dir`` and scored
    by the GSM8K eval exactly as the report scores each stage (:func:`evaluate_stage`: chat, 0-shot, the last number;
    cached under ``<out_dir>/<label>`` beside a stamp of the weights and the questions, which are written to
    ``<out_dir>/toy_benchmarks``). One row per question: question, truth, reply, correct."""
    from tulu_kit.data.synthetic import write_toy_benchmarks
    from tulu_kit.io import read_jsonl

    out_dir = Path(out_dir)
    data_dir = write_toy_benchmarks(out_dir / TOY_DIR, n=HELDOUT_N)  # the same bytes every time (a few KB)
    evaluate_stage(Path(model_dir), data_dir, out_dir / label, benchmarks=("gsm8k",))
    scored = out_dir / label / "gsm8k"
    questions = read_jsonl(data_dir / "gsm8k" / "test.jsonl")
    replies = {p["id"]: p["output"].strip() for p in read_jsonl(scored / "predictions.jsonl")}
    return pd.DataFrame(
        [
            {"question": questions[int(v["id"])]["question"], "truth": v["gold"], "reply": replies[v["id"]],
             "correct": bool(v["correct"])}
            for v in read_jsonl(scored / "results.jsonl")
        ]
    )  # fmt: skip


def heldout_check(cfg, model_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An RL stage's held-out check, as notebooks 08 and 09 run it after training: :func:`heldout_sums` of its start
    model (``cfg.model``) and of its policy (``model_dir``), kept in ``<cfg.out_dir>/heldout/{start,trained}``."""
    folder = Path(cfg.out_dir) / "heldout"
    return heldout_sums(cfg.model, folder, "start"), heldout_sums(model_dir, folder, "trained")


def heldout_line(stage: str, start: pd.DataFrame, trained: pd.DataFrame) -> str:
    """Whether an RL stage's gain carried to questions it never trained on, in a sentence computed from two
    :func:`heldout_sums` results on the same questions: the accuracy rose or fell by more than two standard errors
    of the paired difference (per question: +1 newly right, -1 newly wrong, 0 unchanged; their sample sd / sqrt(n)),
    else moved less; with the questions that changed either way."""
    _same_questions(start, trained)
    diff = trained["correct"].astype(float) - start["correct"].astype(float)
    n, gain = len(diff), float(diff.mean())
    if n < 2:
        raise ValueError(f"heldout_line: {n} question(s); a standard error needs at least 2")
    noise = round(2 * float(diff.std(ddof=1)) / math.sqrt(n), 3)  # decided on the bound as printed
    moved = (
        "rose by more than" if gain > noise else "fell by more than" if -gain > noise else "moved less than"
    )
    return (
        f"{stage}: accuracy on {n} held-out questions (never trained on; greedy, the GSM8K scorer) {moved} two "
        f"standard errors of the paired difference ({noise:.3f}): {start['correct'].mean():.3f} at its start, "
        f"{trained['correct'].mean():.3f} trained ({int((diff > 0).sum())} newly right, {int((diff < 0).sum())} "
        f"newly wrong)."
    )


def _same_questions(start: pd.DataFrame, trained: pd.DataFrame) -> None:
    if list(start["question"]) != list(trained["question"]):
        raise ValueError("the two held-out results are not on the same questions in the same order")


def heldout_table(start: pd.DataFrame, trained: pd.DataFrame) -> pd.DataFrame:
    """The two :func:`heldout_sums` results side by side, the questions whose verdict changed first."""
    _same_questions(start, trained)
    table = pd.DataFrame(
        {"question": start["question"], "truth": start["truth"], "start": start["reply"],
         "trained": trained["reply"], "start correct": start["correct"], "trained correct": trained["correct"]}
    )  # fmt: skip
    changed = table["start correct"] != table["trained correct"]
    return pd.concat([table[changed], table[~changed]])


RL_CHECK = "rl_check.json"  # an RL stage's own check, beside its model: what its notebook printed


def _rl_sampling(cfg, stage: str) -> tuple[float, int]:
    """The RL check's sampling for ``stage`` (:data:`RL_STAGES`): its temperature and its reply length."""
    return float(getattr(cfg, "temperature", 1.0)), int(getattr(cfg, RL_STAGES[stage][1]))


def _control_key(start: Path, rows: list[dict], args: tuple) -> str:
    """What a frozen control's accuracy depends on: the start model's weights, the prompts and the sampling."""
    return json.dumps([_model_stamp(start), rows, *args])


def _check_key(model_dir: Path, control: str) -> str:
    """What a stage's RL check depends on: its policy's weights and its control's key (:func:`_control_key`)."""
    return json.dumps([_model_stamp(Path(model_dir)), control])


def rl_stage_check(stage: str, cfg, model_dir: str | Path) -> dict[str, dict]:
    """The RL sanity check of one RL stage (``stage``: "ppo" or "grpo"), as notebooks 08 and 09 run it after
    training: :func:`rl_accuracy` of its start model (``cfg.model``, the frozen control) and of its policy
    (``model_dir``) on its training prompts at its temperature. Written to ``<cfg.out_dir>/rl_check.json`` with what
    it depends on, so that the report's :func:`rl_check` shows these numbers instead of sampling them again while
    nothing changed."""
    from tulu_kit.io import atomic_write_json
    from tulu_kit.training import load_rlvr_rows

    rows, args = load_rlvr_rows(cfg), _rl_sampling(cfg, stage)
    check = {"frozen": rl_accuracy(cfg.model, rows, *args), "trained": rl_accuracy(model_dir, rows, *args)}
    key = _check_key(model_dir, _control_key(Path(cfg.model), rows, args))
    atomic_write_json(Path(cfg.out_dir) / RL_CHECK, {**check, "key": key})
    return check


def rl_check(run_dir: str | Path) -> dict[str, dict]:
    """The RL sanity check of every RL stage in ``run_dir``: accuracy on the stage's own training prompts of its
    start model (the frozen control: the same run at learning rate 0 leaves these weights as they are; found as
    :func:`stage_starts` finds it, else the ``model`` its config names) and of its trained policy, sampled at the
    stage's temperature; with the last logged KL. Written to ``<run_dir>/toy_eval/rl.json``; re-used while both
    models are unchanged. A stage whose notebook checked the same models, prompts and sampling
    (:func:`rl_stage_check`) is shown as it printed it, not sampled again."""
    from types import SimpleNamespace

    from tulu_kit.io import atomic_write_json
    from tulu_kit.training import load_rlvr_rows

    run_dir = Path(run_dir)
    starts = stage_starts(run_dir)
    out: dict[str, dict] = {}
    frozen: dict[str, dict] = {}
    cached = read_json(run_dir / "toy_eval" / "rl.json")
    for stage in RL_STAGES:
        model_dir, config = run_dir / stage / "model", run_dir / stage / "config.json"
        if not ((model_dir / "config.json").is_file() and config.is_file()):
            continue
        cfg = SimpleNamespace(
            **{"train_split": "train", "max_train_samples": 0, **json.loads(config.read_text())}
        )
        start = run_dir / starts[stage] / "model" if stage in starts else Path(cfg.model)
        stamp = _model_stamp(model_dir) + "|" + _model_stamp(start)
        if cached.get(stage, {}).get("stamp") == stamp:
            out[stage] = cached[stage]
            continue
        rows, args = load_rlvr_rows(cfg), _rl_sampling(cfg, stage)
        metrics = read_json(run_dir / stage / "metrics.json")
        key = _control_key(start, rows, args)
        own = read_json(run_dir / stage / RL_CHECK)
        if own.get("key") == _check_key(model_dir, key):  # as the stage's notebook printed it
            frozen.setdefault(key, own["frozen"])
            checked = {"frozen": own["frozen"], "trained": own["trained"]}
        else:
            if key not in frozen:  # PPO and GRPO from the same model, prompts and sampling: one control
                frozen[key] = rl_accuracy(start, rows, *args)
            checked = {"frozen": frozen[key], "trained": rl_accuracy(model_dir, rows, *args)}
        out[stage] = {
            **checked,
            "kl_last": metrics.get("kl_last"),
            "kl_max": metrics.get("kl_max"),
            "temperature": args[0],
            "stamp": stamp,
        }
    if out or (run_dir / "toy_eval" / "rl.json").is_file():  # an RL stage gone since: its old rows go too
        atomic_write_json(run_dir / "toy_eval" / "rl.json", out)
    return out


def read_json(path: Path) -> dict:
    """A result file of this module, or {} where that stage or seed has none yet (a bad file names itself)."""
    from tulu_kit.io import read_json as read

    return read(path) if path.is_file() else {}


def rl_table(per_seed: list[dict]) -> pd.DataFrame:
    """The RL sanity check over seeds: one row per RL stage, its frozen control and trained policy (sampled and
    greedy accuracy on its training prompts, mean ± sd over seeds, or the one seed's value) and the last KL."""
    per_seed = [s for s in per_seed if s]
    rows = []
    for stage, (label, _) in RL_STAGES.items():
        runs = [run[stage] for run in per_seed if stage in run]
        if not runs:
            continue
        row = {"stage": label, "seeds": len(runs)}
        for key in ("frozen", "trained"):
            for measure in ("sampled", "greedy"):
                mean, sd = _band([r[key][measure] for r in runs])
                row[f"{key} {measure}"] = f"{mean:.3f} ± {sd:.3f}" if len(runs) > 1 else f"{mean:.3f}"
        delta = [r["trained"]["sampled"] - r["frozen"]["sampled"] for r in runs]
        mean, sd = _band(delta)
        row["Δ sampled"] = f"{mean:+.3f} ± {sd:.3f}" if len(runs) > 1 else f"{mean:+.3f}"
        kls = [r["kl_last"] for r in runs if isinstance(r.get("kl_last"), (int, float))]
        row["KL (last)"] = f"{sum(kls) / len(kls):.3f}" if kls else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)
