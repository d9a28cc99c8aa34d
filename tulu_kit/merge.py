"""Merging (``notebooks/06_merging.ipynb``, ``tulu-kit merge``): LoRA/QLoRA adapters into their base, and
same-architecture checkpoints into one (linear soups, task arithmetic, TIES, SLERP, DARE), plus a sweep along
the merge path scored on held-out preference pairs. Weight diffs (Alpaca / Tulu 1) live in ``weight_diff``.

Model merging drives mergekit (LGPL-3.0, ``pip install 'tulu-kit[merge]'``) from our config: it streams tensor
by tensor and implements every method below; what we add is the config, the compatibility check before any
work, the tokenizer and chat template, and the sweep. With ``θ_i`` the checkpoints, ``w_i`` their weights,
``θ_0`` the shared base and ``τ_i = θ_i − θ_0`` their task vectors:

* ``linear`` — model soup, Wortsman et al. 2022 (arXiv 2203.05482): ``θ = Σ w_i θ_i / Σ w_i``
  (open-instruct ``merge_models.py`` normalises the weights the same way).
* ``task_arithmetic`` — Ilharco et al. 2023 (arXiv 2212.04089): ``θ = θ_0 + λ Σ w_i τ_i``.
* ``ties`` — Yadav et al. 2023 (arXiv 2306.01708): trim each ``w_i τ_i`` to its top-``density`` magnitudes
  (per tensor in mergekit, per model in the paper), elect the sign ``γ = sign(Σ_i w_i τ̂_i)``, average the
  entries that agree with it (disjoint mean ``Σ_{i∈A} w_i τ̂_i / Σ_{i∈A} w_i``), add ``λ`` times it to θ_0.
* ``slerp`` — spherical interpolation of two checkpoints per tensor (Shoemake 1985), with ``t`` the weight of
  the second: ``θ = sin((1−t)Ω)/sin Ω · θ_1 + sin(tΩ)/sin Ω · θ_2``, ``cos Ω = θ̂_1·θ̂_2``; linear when nearly
  parallel.
* ``dare_linear`` / ``dare_ties`` — Yu et al. 2024 (arXiv 2311.03099): drop each delta entry with probability
  ``1 − density`` and rescale the rest by ``1/density``, then task arithmetic / TIES.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tulu_kit.io import atomic_dir, write_jsonl
from tulu_kit.results import write_result
from tulu_kit.weight_diff import copy_side_files, parse_size, tensor_specs

log = logging.getLogger(__name__)

Method = Literal["linear", "task_arithmetic", "ties", "slerp", "dare_linear", "dare_ties"]
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
LAB_MODELS = ("../runs/lab/sft/model", "../runs/lab/dpo/model")
LAB_PATH = (0.0, 0.25, 0.5, 0.75, 1.0)
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass
class MergeConfig:
    """The merge stage: merge ``models`` at ``weights`` into ``<out_dir>/model``, and along ``path``.

    The defaults are the lab run's paths, relative to ``notebooks/`` (a recipe sets them all).
    """

    out_dir: str = "../runs/lab/merge"  # the merged model goes to <out_dir>/model
    models: list[str] = field(default_factory=lambda: list(LAB_MODELS))  # same architecture and tokenizer
    method: Method = "linear"  # linear | task_arithmetic | ties | slerp | dare_linear | dare_ties
    weights: list[float] = field(default_factory=list)  # one per model; empty = equal; slerp: t = w2/(w1+w2)
    base_model: str = ""  # θ_0 of the task vectors (task_arithmetic, ties, dare_*): what all were tuned from
    density: float = 1.0  # ties / dare_*: fraction of each task vector kept (TIES: largest; DARE: random)
    scale: float = 1.0  # λ, the factor on the merged task vector (task_arithmetic, ties, dare_*)
    path: list[float] = field(default_factory=lambda: list(LAB_PATH))  # 2 models: merge at [1-t, t] per t
    eval_file: str = "../runs/lab/data/preference_eval.jsonl"  # chosen/rejected pairs scored; empty = none
    eval_max_examples: int = 64  # first N pairs of eval_file
    keep_path_models: bool = False  # keep every path checkpoint under <out_dir>/path/ (else only metrics)
    out_dtype: str = ""  # dtype of the merged weights: empty = the first model's, or float32 / bfloat16
    max_shard_size: str = "2GB"  # safetensors shard size of the merged checkpoint
    seed: int = 42  # DARE's random drops

    def __post_init__(self):
        if not self.models:
            raise ValueError("models: give the checkpoints to merge")
        if self.weights and len(self.weights) != len(self.models):
            raise ValueError(f"weights: {len(self.weights)} weights for {len(self.models)} models")
        if self.method in TASK_VECTOR_METHODS and not self.base_model:
            raise ValueError(
                f"base_model: method '{self.method}' merges task vectors θ_i − θ_0 and needs θ_0"
            )
        if self.method not in TASK_VECTOR_METHODS and len(self.models) < 2:
            raise ValueError(f"models: method '{self.method}' needs at least 2 models")
        if self.method == "slerp" and len(self.models) != 2:
            raise ValueError(f"models: slerp interpolates exactly 2 models, got {len(self.models)}")
        if self.path and len(self.models) != 2:
            raise ValueError("path: a merge path runs between exactly 2 models")
        if not 0 < self.density <= 1:
            raise ValueError(f"density: must be in (0, 1], got {self.density}")
        if self.out_dtype not in ("", "float32", "bfloat16", "float16"):
            raise ValueError(f"out_dtype: must be '', float32, bfloat16 or float16, got {self.out_dtype!r}")
        parse_size(self.max_shard_size)


# --------------------------------------------------------------------------- checks before any work


def _read_config(path: Path) -> dict:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model checkpoint (no config.json)")
    return json.loads((path / "config.json").read_text())


def _vocab(path: Path) -> dict | None:
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    return {"vocab": tok.get_vocab(), "special": {k: str(v) for k, v in tok.special_tokens_map.items()}}


def check_compatible(paths: list[str | Path]) -> None:
    """Raise ValueError unless all checkpoints share architecture, tensor names and shapes, and tokenizer.

    Reads only configs, safetensors headers and tokenizers, so a mismatch is reported before any merging.
    """
    paths = [Path(p) for p in paths]
    ref, ref_cfg = paths[0], _read_config(paths[0])
    ref_specs = tensor_specs(ref)
    for p in paths[1:]:
        cfg = _read_config(p)
        for key in ("model_type", "architectures"):
            if cfg.get(key) != ref_cfg.get(key):
                raise ValueError(f"cannot merge {p} into {ref}: {key} {cfg.get(key)} != {ref_cfg.get(key)}")
        specs = tensor_specs(p)
        if set(specs) != set(ref_specs):
            diff = sorted(set(specs) ^ set(ref_specs))
            raise ValueError(f"cannot merge {p} with {ref}: different tensors, e.g. {diff[:5]}")
        for name, (_, shape) in specs.items():
            if shape != ref_specs[name][1]:
                want = list(ref_specs[name][1])
                raise ValueError(
                    f"cannot merge {p} with {ref}: tensor {name} has shape {list(shape)} vs {want}"
                )
    vocabs = {p: _vocab(p) for p in paths}
    if vocabs[ref] is None:
        raise ValueError(f"{ref}: no tokenizer files; the first model's tokenizer is copied to the merge")
    for p, v in vocabs.items():
        if v is None:
            log.warning("%s has no tokenizer: its vocabulary is not checked against %s", p, ref)
        elif v != vocabs[ref]:
            r = vocabs[ref]
            extra = sorted(set(v["vocab"].items()) ^ set(r["vocab"].items()))[:3]
            raise ValueError(
                f"cannot merge {p} with {ref}: tokenizers differ ({len(v['vocab'])} vs {len(r['vocab'])} "
                f"tokens; e.g. {extra}; special tokens {v['special']} vs {r['special']})"
            )


# --------------------------------------------------------------------------- model merging (mergekit)


def mergekit_config(
    models: list[str],
    method: str,
    weights: list[float] | None = None,
    base_model: str = "",
    density: float = 1.0,
    scale: float = 1.0,
    out_dtype: str = "float32",
) -> dict:
    """Our parameters as a mergekit configuration (the dict form of its YAML)."""
    weights = list(weights) if weights else [1.0] * len(models)
    cfg: dict = {"merge_method": method, "dtype": "float32", "out_dtype": out_dtype}
    if method == "linear":
        cfg["models"] = [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, weights)]
        cfg["parameters"] = {"normalize": True}
    elif method == "slerp":
        cfg["base_model"] = models[0]
        cfg["models"] = [{"model": m} for m in models]
        cfg["parameters"] = {"t": weights[1] / (weights[0] + weights[1])}
    elif method == "task_arithmetic":
        cfg["base_model"] = base_model
        cfg["models"] = [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, weights)]
        cfg["parameters"] = {"lambda": scale}
    else:
        # DARE rescales kept entries by 1/density (the paper's 1/(1-p)); mergekit's `rescale` matches L1 norms
        # instead, so it is off and the factor goes into the weights (TIES' sign election is unchanged by it).
        dare = method.startswith("dare")
        params = [{"weight": w / density if dare else w, "density": density} for w in weights]
        cfg["base_model"] = base_model
        cfg["models"] = [{"model": m, "parameters": p} for m, p in zip(models, params)]
        cfg["parameters"] = {"lambda": scale, "rescale": False}
    return cfg


def merge_models(
    models: list[str | Path],
    out_dir: str | Path,
    method: str = "linear",
    weights: list[float] | None = None,
    base_model: str | Path = "",
    density: float = 1.0,
    scale: float = 1.0,
    out_dtype: str = "",
    max_shard_size: str | int = "2GB",
    seed: int = 42,
    check: bool = True,
) -> Path:
    """Merge same-architecture checkpoints with mergekit into ``out_dir`` (tokenizer: the first model's)."""
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except ImportError:
        raise ImportError("model merging needs mergekit: pip install 'tulu-kit[merge]'") from None
    models = [str(m) for m in models]
    if check:
        check_compatible(models + ([str(base_model)] if base_model else []))
    out_dtype = out_dtype or _SAFETENSORS_DTYPES.get(
        next(iter(tensor_specs(models[0]).values()))[0], "float32"
    )
    cfg = mergekit_config(models, method, weights, str(base_model), density, scale, out_dtype)
    options = MergeOptions(
        copy_tokenizer=False,
        out_shard_size=parse_size(max_shard_size),
        random_seed=seed,
        quiet=True,
        lazy_unpickle=True,
    )
    with atomic_dir(out_dir) as tmp:
        run_merge(MergeConfiguration.model_validate(cfg), str(tmp), options)
        copy_side_files(models[0], tmp, overwrite=False)  # tokenizer, chat template, generation config
    log.info("merged %s (%s, weights %s) -> %s", models, method, weights, out_dir)
    return Path(out_dir)


# --------------------------------------------------------------------------- the metric along the path


def preference_metrics(model_dir: str | Path, eval_file: str | Path, max_examples: int = 64) -> dict:
    """Held-out likelihood preference of a model: the share of pairs with log p(chosen) > log p(rejected)
    (summed over response tokens), their mean gap, and the mean per-token log-likelihood of the chosen replies.

    This is the model's own preference, not DPO's implicit reward ``β log π/π_ref``: the reference term differs
    between the chosen and the rejected reply, so it does not cancel, and a merge has no single reference.
    """
    from tulu_kit.data.pairs import load_pairs
    from tulu_kit.data.tokenize import tokenize_preference
    from tulu_kit.models import load_model, load_tokenizer, response_logprobs

    pairs = load_pairs(str(eval_file))[0][:max_examples]
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    max_length = getattr(model.config, "max_position_embeddings", None) or 4096
    rows, _ = tokenize_preference(pairs, tokenizer, max_length, source=str(eval_file))
    if not rows:
        raise ValueError(f"{eval_file}: no pair fits the model's context of {max_length} tokens")
    chosen, rejected, lengths = response_logprobs(model, rows)
    return {
        "pref_accuracy": (chosen > rejected).float().mean().item(),
        "chosen_logp_per_token": (chosen / lengths).mean().item(),
        "logp_margin": (chosen - rejected).mean().item(),
        "num_pairs": len(rows),
    }


# --------------------------------------------------------------------------- the stage


def run(cfg: MergeConfig) -> dict:
    """Check the inputs, sweep the merge path (scoring each point), then merge at ``cfg.weights``."""
    out = Path(cfg.out_dir)
    kwargs = dict(
        method=cfg.method, base_model=cfg.base_model, density=cfg.density, scale=cfg.scale,
        out_dtype=cfg.out_dtype, max_shard_size=cfg.max_shard_size, seed=cfg.seed, check=False,
    )  # fmt: skip

    # ---- 1. everything compatible? (configs, tensor shapes, tokenizers; before any merging)
    check_compatible(cfg.models + ([cfg.base_model] if cfg.base_model else []))
    if cfg.eval_file and not Path(cfg.eval_file).is_file():
        raise FileNotFoundError(
            f"eval_file: {cfg.eval_file}: no such file (set eval_file to '' to not score)"
        )

    # ---- 2. the merge path: weights [1 - t, t] between the two models
    rows = []
    for t in cfg.path:
        point_dir = out / "path" / f"t_{t:.3f}"
        merge_models(cfg.models, point_dir, weights=[1 - t, t], **kwargs)
        row = {"t": t, "weights": [1 - t, t]}
        if cfg.eval_file:
            row |= preference_metrics(point_dir, cfg.eval_file, cfg.eval_max_examples)
        rows.append(row)
        log.info("path t=%.3f: %s", t, row)
        if not cfg.keep_path_models:
            shutil.rmtree(point_dir)
    if not cfg.keep_path_models and (out / "path").is_dir():
        shutil.rmtree(out / "path")
    if rows:
        write_jsonl(out / "path_metrics.jsonl", rows)

    # ---- 3. the merged model
    model_dir = merge_models(cfg.models, out / "model", weights=cfg.weights or None, **kwargs)
    metrics = preference_metrics(model_dir, cfg.eval_file, cfg.eval_max_examples) if cfg.eval_file else {}
    # the result (metrics.json): the models merged, the merged model, its held-out metrics, one row per path point
    fields = dict(models=cfg.models, method=cfg.method, held_out=metrics, path=rows)
    return write_result(out, "merge", model_dir, **fields)
