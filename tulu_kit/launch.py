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
import contextlib
import logging
import os
import re
import shlex
import shutil
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
    errors: list[str] = []  # every "SomeError: message" line, for the root cause
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
                errors.extend(line for line in lines if _is_error(line))
                del errors[:-200]
            rc = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    if rc != 0:
        if partial.strip():
            tail.append(partial)
            errors.append(partial)
        cause = root_cause(errors, log_path.parent)
        raise LaunchError(
            (f"{cause}\n" if cause else "")
            + f"(the training command exited with code {rc}; whole log: {log_path})\n"
            + f"$ {' '.join(cmd)}\n--- last lines of {log_path} ---\n"
            + "\n".join(tail)
        )


# "[rank0]: FileNotFoundError: x", "ValueError: x", "torch.OutOfMemoryError: x": a traceback's last line
_ERROR_LINE = re.compile(
    r"^(?:\[rank\d+\]:\s*)?((?:\w+\.)*\w*(?:Error|Exception|Mismatch|Interrupt|Exit)\b:?.*)$"
)
# a rank that died in C++ (SIGABRT: gloo, c10d, an assert): its message is in these lines, not in a traceback
_ABORT_LINE = re.compile(
    r"^(?:\[rank\d+\]:\s*)?(terminate called after throwing an instance of .*|\s*what\(\):.*|Fatal Python error:.*)$"
)
_DISK_FULL = re.compile(
    r"No space left on device|\[Errno 28\]|inline_container\.cc.*unexpected pos|file write failed"
)
# the launchers' own reports that a worker failed: never the cause
_WRAPPERS = (
    "subprocess.CalledProcessError",
    "CalledProcessError",
    "torch.distributed.elastic",
    "ChildFailedError",
)


def _is_error(line: str) -> bool:
    return bool(_ERROR_LINE.match(line) or _ABORT_LINE.match(line) or _DISK_FULL.search(line))


def root_cause(lines: list[str], where: Path) -> str:
    """The first error a launched job printed, in one line (the launchers' "a child failed" reports skipped);
    a full disk says so, with the folder and the space left on it; a rank that aborted in C++ gives the
    exception's type and its ``what()`` message."""
    if any(_DISK_FULL.search(line) for line in lines):
        try:
            free = f"{shutil.disk_usage(where).free / 1e9:.1f} GB free"
        except OSError:
            free = "free space unknown"
        return f"disk full while writing under {where.parent} ({free} there now): free space, or set out_dir elsewhere"
    for i, line in enumerate(lines):
        match = _ERROR_LINE.match(line) or _ABORT_LINE.match(line)
        if match and not match.group(1).startswith(_WRAPPERS):
            cause = match.group(1).strip()
            after = lines[i + 1] if i + 1 < len(lines) else ""
            if cause.startswith("terminate called") and (what := _ABORT_LINE.match(after)):
                cause += "; " + what.group(1).strip()
            return cause
    return ""


def _node_command(
    module: str, config: dict, out_dir: str | Path, launch_args: dict
) -> tuple[list[str], Path]:
    """Write this node's config to ``<out_dir>/launch[/node<R>]/config.yaml``; its launcher command and log path."""
    folder = Path(out_dir) / "launch"
    rank = launch_args.get("machine_rank", 0)
    if launch_args.get("num_machines", 1) > 1:  # every node writes its own command, config and log
        folder = folder / f"node{rank}"
        config = {**config, "machine_rank": rank}
    config_path = folder / "config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    return build_command(module, config_path, **launch_args), folder / "train.log"


def launch(module: str, config: dict, out_dir: str | Path, **launch_args) -> Path:
    """Write ``config`` to ``<out_dir>/launch/config.yaml`` and run ``module`` on it; return the log path.

    ``launch_args`` are :func:`build_command`'s keywords (launcher, num_processes, deepspeed, ...). On the main
    node of a multi-node job started by ``tulu-kit run --hosts`` (``$TULU_KIT_HOSTS``), this also starts the
    other nodes' launchers (:func:`other_nodes`, :func:`remote_prefix`), so a notebook's training cell spans them.
    """
    if isinstance(
        config.get("model"), str
    ):  # a missing folder, an offline Hub id: now, not after the imports
        from tulu_kit.models import check_model_source

        check_model_source(config["model"])
    others = []
    for rank, host in other_nodes(launch_args):
        cmd, log = _node_command(module, config, out_dir, {**launch_args, "machine_rank": rank})
        others.append(_start_remote(host, cmd, log))
    cmd, log_path = _node_command(module, config, out_dir, launch_args)
    logger.info("launching: %s", " ".join(cmd))
    try:
        stream(cmd, log_path)
    except BaseException:
        for proc, _ in others:  # they would wait for rank 0 at the rendezvous for ever
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        raise
    finally:
        for proc, _ in others:
            proc.wait()
    failed = [(proc, log) for proc, log in others if proc.returncode != 0]
    if failed:
        proc, log = failed[0]
        lines = Path(log).read_text(errors="replace").splitlines()
        cause = root_cause([x for x in lines if _is_error(x)], Path(log).parent)
        raise LaunchError(
            f"{cause or 'another node failed'}\n(a node's launcher exited with code {proc.returncode}; its log: "
            f"{log})\n" + "\n".join(lines[-20:])
        )
    return log_path


def other_nodes(launch_args: dict) -> list[tuple[int, str]]:
    """(machine_rank, host) of the nodes this process must start: on machine_rank 0 of a job whose host list
    (``$TULU_KIT_HOSTS``, comma-separated, the main node first) has exactly ``num_machines`` entries."""
    hosts = [h.strip() for h in os.environ.get("TULU_KIT_HOSTS", "").split(",") if h.strip()]
    n = launch_args.get("num_machines", 1)
    if n < 2 or launch_args.get("machine_rank", 0) != 0 or len(hosts) != n:
        return []
    return list(enumerate(hosts))[1:]


def remote_prefix(host: str) -> list[str]:
    """How a command reaches ``host``: ``$TULU_KIT_REMOTE`` (``{host}`` filled in; ``local``: this machine, for
    tests), else ``srun`` inside a SLURM job, else ``ssh``."""
    template = os.environ.get("TULU_KIT_REMOTE")
    if template is None:
        slurm = os.environ.get("SLURM_JOB_ID")
        template = "srun --nodes=1 --ntasks=1 --overlap --nodelist={host}" if slurm else "ssh {host}"
    if template.strip() == "local":
        return []
    return [part.format(host=host) for part in shlex.split(template)]


def _start_remote(host: str, cmd: list[str], log: Path) -> tuple[subprocess.Popen, Path]:
    prefix = remote_prefix(host)
    env = child_env()
    if prefix[:1] == ["ssh"]:  # ssh runs one shell line there: the same folder and import path as here
        line = shlex.join(["env", f"PYTHONPATH={env['PYTHONPATH']}", *cmd])
        cmd = [f"cd {shlex.quote(os.getcwd())} && {line}"]
    full = prefix + cmd
    logger.info("launching on %s: %s", host, " ".join(full))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(full) + "\n")
        out.flush()
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log


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
