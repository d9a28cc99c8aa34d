"""One checkpoint protocol for every training stage: the Trainer stages (SFT, DPO, reward, GRPO) through
:func:`complete_checkpoint_callback`, PPO's own loop through :func:`fresh_start`, :func:`begin_save` and
:func:`complete` (the same three steps the callback takes).

A checkpoint ``<out_dir>/checkpoints/checkpoint-N`` is either whole and marked, or ignored:

* **fresh start**: a run that resumes nothing (step 0) removes every checkpoint in its folder first; they belong to
  an earlier run or attempt, and a later resume must never find one of them half-overwritten by this run;
* **rewrite**: before writing ``checkpoint-N``, a folder of that step is removed, so no old marker stands beside
  new weights;
* **marker last**: after every rank wrote its part, rank 0 writes the resolved config (``tulu_kit_config.json``)
  and then the ``COMPLETE`` marker, holding the step and a hash of the run's identity, each written atomically;
* **rotation after COMPLETE**: only then are checkpoints beyond ``save_total_limit`` deleted (renamed out of the
  ``checkpoint-N`` pattern first, so a kill mid-delete leaves nothing that looks whole);
* **resume**: :func:`last_complete_checkpoint` takes the newest marked checkpoint and refuses one whose config
  shows another run (:func:`run_identity`), naming the folder and the keys that differ.

``tests/test_faults.py`` kills (SIGKILL) each step of this protocol; ``tests/test_ppo.py`` and
``tests/test_grpo.py`` kill the stages themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from tulu_kit.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
CONFIG_NAME = "tulu_kit_config.json"

# Fields that may change when a run resumes: where it runs and what it reports, not what it computes.
# Kept in the identity: num_processes (with the per-device batch and accumulation it fixes which examples make
# each optimizer step, and so the data skipped on resume), max_steps and num_train_epochs (the scheduler decays
# the learning rate over the total steps: a 100-step checkpoint continued to 200 steps follows a schedule that
# neither config describes, and the saved config would lie), deepspeed (ZeRO checkpoints hold sharded optimizer
# states a plain DDP run cannot read). To train longer, start a new run from the saved model.
RESUMABLE_KEYS = (
    "resume", "out_dir", "launcher", "num_machines", "machine_rank", "main_process_ip", "main_process_port",
    "report_to", "logging_steps", "save_steps", "save_total_limit", "eval_steps",
)  # fmt: skip


class CheckpointMismatch(ValueError):
    """A complete checkpoint in the folder belongs to another run (its config differs in the run's identity)."""


def run_identity(config: dict) -> dict:
    """What makes two configs the same run: the resolved config (as JSON) minus :data:`RESUMABLE_KEYS`."""
    plain = json.loads(json.dumps(config, default=str))
    return {k: v for k, v in plain.items() if k not in RESUMABLE_KEYS}


def identity_hash(config: dict) -> str:
    """A short hash of :func:`run_identity`, recorded in each COMPLETE marker."""
    return hashlib.sha256(json.dumps(run_identity(config), sort_keys=True).encode()).hexdigest()[:16]


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    missing = "<absent>"
    return [
        f"{k}: {saved.get(k, missing)!r} in the checkpoint, {current.get(k, missing)!r} now"
        for k in keys
        if saved.get(k, missing) != current.get(k, missing)
    ]


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def step_of(path: Path) -> int:
    """N of a ``checkpoint-N`` folder; -1 for any other name."""
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def checkpoint_dirs(folder: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``folder``, by step (numerically: 10 after 2)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if step_of(p) >= 0 and p.is_dir()), key=step_of)


def discard(path: Path) -> None:
    """Delete a checkpoint so that no kill leaves it marked: rename it out of the ``checkpoint-N`` pattern first."""
    trash = path.parent / f".deleting-{path.name}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def fresh_start(folder: str | Path) -> None:
    """A run that resumes nothing: rank 0 removes the checkpoints left in ``folder``; every rank waits for it."""
    if _is_main():
        for path in checkpoint_dirs(folder):
            logger.warning("fresh run (nothing resumed): removing %s left by an earlier run", path)
            discard(path)
    _barrier()


def begin_save(folder: str | Path) -> None:
    """Before ranks write ``folder`` (a ``checkpoint-N``): rank 0 removes a stale folder of that step."""
    folder = Path(folder)
    if _is_main() and folder.exists():
        discard(folder)
    _barrier()  # no rank writes into the folder before the stale one is gone


def complete(folder: str | Path, config: dict, step: int, save_total_limit: int | None) -> None:
    """After every rank wrote its part of ``folder``: rank 0 writes the config, then the COMPLETE marker, then
    rotates; every rank waits for it."""
    _barrier()
    if _is_main():
        folder = Path(folder)
        atomic_write_json(folder / CONFIG_NAME, config)
        marker = {"global_step": step, "identity": identity_hash(config)}
        atomic_write_text(folder / COMPLETE, json.dumps(marker) + "\n")
        rotate_checkpoints(folder.parent, folder, save_total_limit)
    _barrier()


def rotate_checkpoints(folder: str | Path, newest: Path, save_total_limit: int | None) -> list[Path]:
    """Delete the checkpoints older than ``newest`` beyond ``save_total_limit`` (complete ones kept first).

    Called only once ``newest`` is marked COMPLETE, so a kill at any point leaves at least one complete checkpoint.
    Returns the deleted folders.
    """
    for trash in Path(folder).glob(".deleting-checkpoint-*"):  # a deletion cut short by a kill
        shutil.rmtree(trash, ignore_errors=True)
    if not save_total_limit or save_total_limit < 1:
        return []
    older = [p for p in checkpoint_dirs(folder) if step_of(p) < step_of(newest)]
    complete_ones = [p for p in older if (p / COMPLETE).is_file()]
    keep = complete_ones[-(save_total_limit - 1) :] if save_total_limit > 1 else []
    doomed = [p for p in older if p not in keep]
    for path in doomed:
        discard(path)
    return doomed


def complete_checkpoint_callback(config: dict, save_total_limit: int | None = None):
    """A TrainerCallback that runs this protocol around the Trainer's own saves (the Trainer must not rotate)."""
    from transformers import TrainerCallback  # here: importing it pulls in peft, seconds at import time

    class CompleteCheckpointCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                fresh_start(args.output_dir)

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                begin_save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            complete(folder, config, state.global_step, save_total_limit)
            return control

    return CompleteCheckpointCallback()


def last_complete_checkpoint(folder: str | Path, config: dict | None = None) -> Path | None:
    """The highest-step ``checkpoint-N`` in ``folder`` that has its COMPLETE marker (None if there is none).

    With ``config``, that checkpoint must belong to the same run (:func:`run_identity`): one of another run raises
    :class:`CheckpointMismatch` naming the folder and the keys that differ, rather than resuming it.
    """
    folder = Path(folder)
    for path in reversed(checkpoint_dirs(folder)):
        if not (path / COMPLETE).is_file():
            logger.warning("ignoring incomplete checkpoint %s (no %s marker)", path, COMPLETE)
            continue
        if config is None:
            return path
        advice = (
            f"Resuming continues the same run. Train into another out_dir, or delete {folder} to start over."
        )
        try:
            saved = json.loads((path / CONFIG_NAME).read_text())
        except (OSError, ValueError):
            raise CheckpointMismatch(
                f"{path}: complete, but its {CONFIG_NAME} is missing or unreadable, so it cannot be told to be "
                f"this run's. {advice}"
            ) from None
        diff = _differences(run_identity(saved), run_identity(config))
        if diff:
            raise CheckpointMismatch(
                f"{path} belongs to another run; it differs in:\n  " + "\n  ".join(diff) + f"\n{advice}"
            )
        return path
    return None
