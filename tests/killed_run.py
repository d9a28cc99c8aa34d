"""Run a training stage in a subprocess that SIGKILLs itself at a chosen point of the checkpoint protocol
(`tulu_kit.checkpoints`), for the stages' kill-and-resume tests (tests/test_ppo.py, tests/test_grpo.py).

Points: ``mid-save`` (checkpoint-N fully written by every rank, its config and COMPLETE marker not yet),
``after-save`` (checkpoint-N complete, rotation done), ``final-save`` (the final model is being written)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, signal, sys
from tulu_kit import checkpoints, launch, training
stage, config, point, step = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_complete, real_atomic_dir = checkpoints.complete, launch.atomic_dir

def complete(folder, cfg, s, limit):
    if point == "mid-save" and s == step:
        die()
    real_complete(folder, cfg, s, limit)
    if point == "after-save" and s == step:
        die()

def atomic_dir(*a, **k):
    if point == "final-save":
        die()
    return real_atomic_dir(*a, **k)

checkpoints.complete, launch.atomic_dir = complete, atomic_dir
module = __import__(f"tulu_kit.{stage}", fromlist=["main"])
sys.exit(module.main([config]))
"""


def run_killed(stage: str, cfg, point: str, step: int = 0, tmp: Path | None = None) -> int:
    """Run ``cfg`` (a stage config) in a subprocess killed at ``point`` (of checkpoint-``step``); returns the
    subprocess's return code (-9 when the kill point was reached)."""
    from tulu_kit.config import to_dict

    path = Path(tmp or cfg.out_dir).parent / f"{Path(cfg.out_dir).name}-{point}-{step}.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, stage, str(path), point, str(step)], env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)  # fmt: skip
    if proc.returncode != -9:
        print(proc.stderr[-3000:])
    return proc.returncode
