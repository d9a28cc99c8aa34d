"""One result file for every stage: ``<out_dir>/metrics.json``, written by :func:`write_result`.

Training stages (sft, lora, dpo, reward, ppo, grpo), merges and evals all leave the same file, flat JSON with
a few keys every stage sets and the stage's own numbers beside them:

* ``stage``: the stage kind (``sft``, ``dpo``, ``merge``, ``eval_gsm8k``, ...);
* ``model_dir``: the model the stage produced (training, merge) or evaluated (eval), or ``null``;
* ``manifest``: what is needed to compare or reproduce the number (library versions, and what the stage adds:
  chat template hash, decoding settings, data hash, ...);
* the stage's own numbers: ``score``/``stderr``/``n`` for an eval, ``train_steps``/``first_loss``/``last_loss``
  /``eval_before``/``eval_after`` for a training stage, ...

The report reads every stage's file with :func:`read_result`; the next stage reads ``model_dir`` from it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from pathlib import Path
from typing import Any

from tulu_kit.io import atomic_write_json, read_json

RESULT_FILE = "metrics.json"
_LIBRARIES = (
    "tulu-kit",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "deepspeed",
    "vllm",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a number depends on (vLLM and DeepSpeed only once imported)."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        if name in ("vllm", "deepspeed") and name not in sys.modules:
            continue
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def manifest(**extra: Any) -> dict:
    """The versions every result records, plus what the stage adds (``extra`` wins on a shared key)."""
    return {"versions": library_versions(), **extra}


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def manifest_diff(a: dict, b: dict) -> dict:
    """What differs between two manifests: ``{"versions.trl": ("1.16.0", "1.17.0"), ...}`` (empty: comparable).

    ``a`` and ``b`` are manifests or whole results (their ``manifest`` is compared); nested keys are dotted, and
    a key that only one side records shows ``None`` on the other.
    """
    fa = _flatten(a["manifest"] if isinstance(a.get("manifest"), dict) else a)
    fb = _flatten(b["manifest"] if isinstance(b.get("manifest"), dict) else b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}


def write_result(out_dir: str | Path, stage: str, model_dir: str | Path | None = None, **fields: Any) -> dict:
    """Write ``<out_dir>/metrics.json`` atomically and return what was written.

    ``fields`` may carry a ``manifest`` dict; the library versions are always added to it.
    """
    result = {
        "stage": stage,
        "model_dir": str(model_dir) if model_dir is not None else None,
        **fields,
        "manifest": manifest(**fields.get("manifest", {})),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(Path(out_dir) / RESULT_FILE, result)
    return result


def result_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / RESULT_FILE


def read_result(out_dir: str | Path) -> dict:
    """A stage's result; a missing file is an error naming it (the stage did not finish)."""
    path = result_path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no result (the stage has not finished in {Path(out_dir)})")
    return read_json(path)
