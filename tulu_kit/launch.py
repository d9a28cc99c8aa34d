"""Launch a training stage on 1..N processes and nodes, and keep its checkpoints resumable (notebooks 02-05).

A notebook's training cell calls a stage's ``run(cfg)``, which calls :func:`launch`: the config is written to
``<out_dir>/launch/config.yaml`` and the stage's entry point (``python -m tulu_kit.<stage> CONFIG``) runs under
``accelerate launch`` (or ``torchrun``) in a subprocess. Its output is streamed into the cell and tee'd to
``<out_dir>/launch/train.log``; a non-zero exit code raises :class:`LaunchError` with the last lines of the log.

Launcher facts this module encodes (each checked on this project's machines):

* ``accelerate launch --cpu --num_processes 2`` quietly starts one process, so several processes always use
  ``--multi_gpu``, which falls back to gloo (``MULTI_CPU``) on a machine without GPUs.
* DeepSpeed goes through ``--use_deepspeed --deepspeed_config_file`` (ZeRO-2/3, offload; gloo on CPU). ZeRO-3
  needs ``deepspeed.init_distributed`` before the model is built (under either launcher): :func:`worker_config`.

Checkpoints follow one protocol for every stage, in :mod:`tulu_kit.checkpoints`. :func:`tulu_kit.io.atomic_dir`
writes a final model beside its target and renames it into place.
"""

from __future__ import annotations

import codecs
import collections
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tulu_kit.config import REPO_ROOT, from_dict, load_yaml
from tulu_kit.io import atomic_dir, atomic_write_json, atomic_write_text  # noqa: F401 (atomic_dir: for the stages)

logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """A launched training job exited with a non-zero code; the message holds the end of its log."""


# --------------------------------------------------------------------------- commands


def build_command(
    module: str,
    config_path: str | Path,
    *,
    launcher: str = "accelerate",
    num_processes: int = 1,
    deepspeed: str = "",
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str = "",
    main_process_port: int = 29500,
    mixed_precision: str = "no",
) -> list[str]:
    """The command line that runs ``python -m module config_path`` on ``num_processes`` processes in total.

    ``module`` may also be a path to a ``.py`` script. ``num_processes`` counts all machines, as accelerate does.
    """
    if num_machines > 1 and not main_process_ip:
        raise ValueError("multi-node launching needs main_process_ip (the address of machine_rank 0)")
    if num_processes % num_machines:
        raise ValueError(f"num_processes {num_processes} is not divisible by num_machines {num_machines}")
    target = [module] if module.endswith(".py") else ["-m", module]
    if launcher == "torchrun":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={num_processes // num_machines}",
        ]
        cmd += [
            f"--nnodes={num_machines}",
            f"--node_rank={machine_rank}",
            f"--master_port={main_process_port}",
        ]
        if main_process_ip:
            cmd.append(f"--master_addr={main_process_ip}")
        return cmd + target + [str(config_path)]
    if launcher != "accelerate":
        raise ValueError(f"launcher must be 'accelerate' or 'torchrun', got {launcher!r}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", f"--num_processes={num_processes}"]
    cmd += [f"--num_machines={num_machines}", f"--machine_rank={machine_rank}"]
    cmd += [f"--mixed_precision={mixed_precision}", "--dynamo_backend=no"]
    if main_process_ip:
        cmd += [f"--main_process_ip={main_process_ip}", f"--main_process_port={main_process_port}"]
    else:
        cmd.append(f"--main_process_port={main_process_port}")
    if deepspeed:
        cmd += ["--use_deepspeed", f"--deepspeed_config_file={deepspeed}"]
        if num_machines > 1:
            cmd.append("--deepspeed_multinode_launcher=standard")
    elif num_processes > 1:
        cmd.append("--multi_gpu")  # never --cpu: it silently runs a single process; gloo is used without GPUs
    if module.endswith(".py"):
        return cmd + target + [str(config_path)]
    return cmd + ["-m", module, str(config_path)]


def child_env(extra: dict | None = None) -> dict:
    """The environment of a launched job: unbuffered output, the repo importable, caches kept in the project."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def stream(cmd: list[str], log_path: str | Path, env: dict | None = None, tail_lines: int = 40) -> None:
    """Run ``cmd``, copying its output to this process's stdout (a notebook cell) and to ``log_path``.

    Raises :class:`LaunchError` on a non-zero exit code; interrupting (Ctrl-C, a notebook's stop button) stops
    the whole process group. The log is flushed after every chunk, so it holds the output even when this process
    is killed.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    partial = ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with log_path.open("w", encoding="utf-8", buffering=1) as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env or child_env(),
            start_new_session=True,
        )
        try:
            while (
                chunk := proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            ):
                text = decoder.decode(chunk)
                sys.stdout.write(text)  # raw, so tqdm's carriage returns redraw in place
                sys.stdout.flush()
                log.write(text)
                log.flush()  # progress bars end in \r, not \n: line buffering alone would hold them back
                partial += text
                *lines, partial = re.split(r"[\r\n]", partial)
                tail.extend(line for line in lines if line.strip())
            rc = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    if rc != 0:
        if partial.strip():
            tail.append(partial)
        raise LaunchError(
            f"command exited with code {rc}: {' '.join(cmd)}\n--- last lines of {log_path} ---\n"
            + "\n".join(tail)
        )


def launch(module: str, config: dict, out_dir: str | Path, **launch_args) -> Path:
    """Write ``config`` to ``<out_dir>/launch/config.yaml`` and run ``module`` on it; return the log path.

    ``launch_args`` are :func:`build_command`'s keywords (launcher, num_processes, deepspeed, ...).
    """
    folder = Path(out_dir) / "launch"
    if launch_args.get("num_machines", 1) > 1:  # every node writes its own command, config and log
        folder = folder / f"node{launch_args.get('machine_rank', 0)}"
    config_path = folder / "config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    cmd = build_command(module, config_path, **launch_args)
    logger.info("launching: %s", " ".join(cmd))
    log_path = folder / "train.log"
    stream(cmd, log_path)
    return log_path


def worker_config(cls: type, argv: list[str]):
    """In a launched rank: read the config file named on the command line, set up logging and distributed init."""
    if len(argv) != 1:
        raise SystemExit(f"usage: python -m <stage module> CONFIG.yaml (got {argv})")
    cfg = from_dict(cls, load_yaml(argv[0]), argv[0])
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank{rank}] %(levelname)s %(name)s: %(message)s",
    )
    deepspeed = getattr(cfg, "deepspeed", "")
    if deepspeed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # ZeRO-3: zero.Init shards the model while it loads, before the Trainer would set up communication
        import deepspeed as ds
        import torch

        ds.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return cfg


def resolve_path(path: str) -> str:
    """A relative path that does not exist from the cwd is read from the repo root (recipes/deepspeed/...)."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    return str(REPO_ROOT / path) if (REPO_ROOT / path).exists() else path
