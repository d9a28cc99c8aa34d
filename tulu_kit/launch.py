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

Checkpoints: the Trainer writes ``checkpoint-N``; :func:`complete_checkpoint_callback` removes a stale folder of
that step before the save, then adds the resolved config and, last, a ``COMPLETE`` marker (after every rank has
written its part), and only then deletes checkpoints beyond ``save_total_limit`` (the Trainer is not asked to
rotate: it would delete the previous checkpoint before the new one is marked). :func:`last_complete_checkpoint`
ignores a checkpoint without the marker, so a run killed mid-save resumes from the previous one, and refuses one
whose config shows another run (:func:`run_identity`). :func:`tulu_kit.io.atomic_dir` writes a final model beside
its target and renames it into place.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import hashlib
import json
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

COMPLETE = "COMPLETE"
CONFIG_NAME = "tulu_kit_config.json"


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
                errors.extend(line for line in lines if _ERROR_LINE.match(line) or _DISK_FULL.search(line))
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


def root_cause(lines: list[str], where: Path) -> str:
    """The first error a launched job printed, in one line (the launchers' "a child failed" reports skipped);
    a full disk says so, with the folder and the space left on it."""
    if any(_DISK_FULL.search(line) for line in lines):
        try:
            free = f"{shutil.disk_usage(where).free / 1e9:.1f} GB free"
        except OSError:
            free = "free space unknown"
        return f"disk full while writing under {where.parent} ({free} there now): free space, or set out_dir elsewhere"
    for line in lines:
        match = _ERROR_LINE.match(line)
        if match and not match.group(1).startswith(_WRAPPERS):
            return match.group(1).strip()
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
        cause = root_cause(
            [x for x in lines if _ERROR_LINE.match(x) or _DISK_FULL.search(x)], Path(log).parent
        )
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


# --------------------------------------------------------------------------- checkpoints


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


def _discard(path: Path) -> None:
    """Delete a checkpoint so that no kill leaves it marked: rename it out of the ``checkpoint-N`` pattern first."""
    trash = path.parent / f".deleting-{path.name}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _step(p) >= 0 and p.is_dir()), key=_step)


def rotate_checkpoints(folder: str | Path, newest: Path, save_total_limit: int | None) -> list[Path]:
    """Delete the checkpoints older than ``newest`` beyond ``save_total_limit`` (complete ones kept first).

    Called only once ``newest`` is marked COMPLETE, so a kill at any point leaves at least one complete checkpoint.
    Returns the deleted folders.
    """
    for trash in Path(folder).glob(".deleting-checkpoint-*"):  # a deletion cut short by a kill
        shutil.rmtree(trash, ignore_errors=True)
    if not save_total_limit or save_total_limit < 1:
        return []
    older = [p for p in _checkpoints(Path(folder)) if _step(p) < _step(newest)]
    keep = (
        [p for p in older if (p / COMPLETE).is_file()][-(save_total_limit - 1) :]
        if save_total_limit > 1
        else []
    )
    doomed = [p for p in older if p not in keep]
    for path in doomed:
        _discard(path)
    return doomed


def complete_checkpoint_callback(config: dict, save_total_limit: int | None = None):
    """A TrainerCallback that makes every ``checkpoint-N`` either whole and marked COMPLETE, or unmarked.

    * a fresh run (step 0) removes checkpoints left in the folder: they belong to an earlier run or attempt;
    * before a save, a folder of the same step (a rewrite) is removed, so no old marker sits beside new weights;
    * after every rank has written its part, the config and then, last, the COMPLETE marker are written;
    * only then are the checkpoints beyond ``save_total_limit`` deleted (the Trainer must not rotate itself).
    """
    from transformers import TrainerCallback  # here: importing it pulls in peft, seconds at import time

    class CompleteCheckpointCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            folder = Path(args.output_dir)
            if state.global_step == 0 and _is_main():
                for path in _checkpoints(folder):
                    logger.warning("fresh run (resume off): removing %s left by an earlier run", path)
                    _discard(path)
            _barrier()

        def on_step_end(self, args, state, control, **kwargs):
            if not control.should_save:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if _is_main() and folder.exists():
                _discard(folder)
            _barrier()  # no rank writes into the folder before the stale one is gone

        def on_save(self, args, state, control, **kwargs):
            _barrier()
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                atomic_write_json(folder / CONFIG_NAME, config)
                marker = {"global_step": state.global_step, "identity": identity_hash(config)}
                atomic_write_text(folder / COMPLETE, json.dumps(marker) + "\n")
                rotate_checkpoints(args.output_dir, folder, save_total_limit)
            _barrier()
            return control

    return CompleteCheckpointCallback()


def identity_hash(config: dict) -> str:
    """A short hash of :func:`run_identity`, recorded in each COMPLETE marker."""
    return hashlib.sha256(json.dumps(run_identity(config), sort_keys=True).encode()).hexdigest()[:16]


def _step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def last_complete_checkpoint(folder: str | Path, config: dict | None = None) -> Path | None:
    """The highest-step ``checkpoint-N`` in ``folder`` that has its COMPLETE marker (None if there is none).

    With ``config``, that checkpoint must belong to the same run (:func:`run_identity`): one of another run raises
    :class:`CheckpointMismatch` naming the folder and the keys that differ, rather than resuming it.
    """
    folder = Path(folder)
    for path in reversed(_checkpoints(folder)):
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


def resolve_path(path: str) -> str:
    """A relative path that does not exist from the cwd is read from the repo root (recipes/deepspeed/...)."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    return str(REPO_ROOT / path) if (REPO_ROOT / path).exists() else path
