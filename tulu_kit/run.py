"""Run a recipe: each stage is a notebook executed by papermill into one run folder.

``<run_dir>/`` receives ``config.yaml`` (the resolved recipe), ``run.json`` (status of every stage),
``notebooks/`` (executed copies under the notebook's own name, ``04_dpo.ipynb``, ``gsm8k.ipynb``; with the stage
name added when several stages run one notebook; partial ones kept on failure) and one folder per stage.
A stage that completed with the same parameters is skipped on a re-run, unless a stage it reads (one whose folder
its parameters name, directly or through others: :func:`tulu_kit.config.stage_dependencies`) has run since: a
stage that starts removes its readers' completion markers. ``force`` re-runs everything. A recipe's ``jobs: N``
runs N stages at a time, each once the stages it reads have ended (on the quickstart, the reward model beside the
on-policy data and DPO, PPO beside GRPO, the evals beside GRPO); ``jobs: 1``, the default, runs them one by one
in recipe order. One run at a time holds a run folder (an advisory lock on
``<run_dir>/.lock``); a second one into it stops at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tulu_kit.config import Recipe, Stage, stage_dependencies
from tulu_kit.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

KERNEL = "python3"  # jupyter_client starts it with this interpreter (sys.executable), so the venv is used
# A headless stage's notebook has no one watching its progress bars: at most one update every 30 s keeps the
# executed notebook readable (papermill's own bar shows progress cell by cell). Set them to override.
QUIET_ENV = {
    "TQDM_MININTERVAL": "30",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def params_hash(stage: Stage) -> str:
    payload = json.dumps(
        {"kind": stage.kind, "notebook": str(stage.notebook), **stage.params}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _marker(recipe: Recipe, stage: Stage) -> Path:
    return recipe.run_dir / stage.name / ".stage.json"


def stage_completed(recipe: Recipe, stage: Stage) -> bool:
    """Whether ``stage`` finished before with exactly these parameters."""
    marker = _marker(recipe, stage)
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    return info.get("status") == "completed" and info.get("params_hash") == params_hash(stage)


class RunLocked(RuntimeError):
    """Another process is running into the same run folder."""


@contextmanager
def lock_run_dir(run_dir: Path, lock: Path | None = None) -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` (or ``lock``; fcntl) while a run writes into ``run_dir``; raise :class:`RunLocked`
    if another process holds it. The kernel drops the lock when its holder dies, so a lock file left by a killed
    run does not block; the file keeps the holder's pid for the message.
    """
    path = lock or run_dir / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the stages' kernels (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"{run_dir} is in use by another tulu-kit run (pid {holder}, lock {path}); "
                "wait for it to finish, or write into another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


class RunStatus:
    """``run.json``: the run's and each stage's status, rewritten atomically on every change."""

    def __init__(self, recipe: Recipe):
        self.path = recipe.run_dir / "run.json"
        self.data = {
            "name": recipe.name,
            "recipe": recipe.source,
            "status": "running",
            "stages": {s.name: {"kind": s.kind, "status": "pending"} for s in recipe.stages},
        }
        self.save()

    def set(self, stage: str | None = None, **fields) -> None:
        (self.data["stages"][stage] if stage else self.data).update(fields)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def _print_failure(stage: Stage, error, output: Path) -> None:
    """The root cause in one line first (the error's first line: file, key, "run notebook 02 first"), then the
    cell it came from, the whole message and where the partial notebook (with the traceback) is."""
    first = (str(error.evalue).strip().splitlines() or [""])[0]
    lines = [
        f"\nstage '{stage.name}' failed: {error.ename}: {first}",
        f"in {stage.notebook.name}, cell [{error.exec_count}]:",
        "-" * 80,
        error.source.rstrip(),
        "-" * 80,
        f"{error.ename}: {error.evalue}",
        f"partial executed notebook (with the traceback): {output}",
        "to continue once it is fixed, run the same command again: completed stages are skipped",
    ]
    print("\n".join(lines), file=sys.stderr)


def executed_path(recipe: Recipe, stage: Stage) -> Path:
    """``notebooks/<the notebook's own name>``, or ``<stem>.<stage>.ipynb`` when several stages run it."""
    shared = sum(s.notebook == stage.notebook for s in recipe.stages) > 1
    name = f"{stage.notebook.stem}.{stage.name}.ipynb" if shared else stage.notebook.name
    return recipe.run_dir / "notebooks" / name


# the kernel managers of the stage kernels alive now: concurrent eval stages are interrupted through them (a kernel
# runs in a session of its own, so a Ctrl-C in the terminal does not reach it)
_LIVE_KERNELS: set = set()


def stage_kernel_manager(log_path: Path, cwd: Path, extra_env: dict | None = None) -> type:
    """The kernel manager of a stage: the kernel started in ``cwd`` (the notebook's folder; papermill's own
    ``cwd`` would change this whole process's directory, which concurrent stages share), its stderr to
    ``log_path``, the quiet environment (and ``extra_env``, unless already set), and no courtesy SIGINT when
    papermill shuts a finished kernel down (jupyter_client interrupts first, and an idle kernel then logs
    "KeyboardInterrupt caught in kernel", which a successful run left in its folder)."""
    from jupyter_client.manager import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            env = dict(kw.get("env") or os.environ)
            for key, value in {**QUIET_ENV, **(extra_env or {})}.items():
                env.setdefault(key, value)  # the kernel and what it launches only, not papermill's own bar
            with open(log_path, "ab") as log:
                kw = {**kw, "stderr": log, "env": env, "cwd": str(cwd)}
                result = await super()._async_launch_kernel(kernel_cmd, **kw)
            _LIVE_KERNELS.add(self)
            return result

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            _LIVE_KERNELS.discard(self)
            await super()._async_cleanup_resources(restart=restart)

        async def _async_interrupt_kernel(self):
            if self.shutting_down:  # the shutdown request follows
                return
            await super()._async_interrupt_kernel()

    return StageKernelManager


@contextlib.contextmanager
def _kernel_options(log_path: Path, cwd: Path, env: dict | None = None):
    """How papermill starts the kernel: its own stderr to ``log_path``, IPC sockets instead of TCP (POSIX).

    The kernel's stderr carries only the kernel's own log (a cell's output reaches the notebook over ZMQ), so
    it goes to a file beside the executed notebook, kept when not empty: the terminal keeps to the stage's
    progress and a Ctrl-C no longer ends in the kernel's traceback about a closed socket. IPC sockets in a
    private temporary folder keep the traffic off the network stack and silence the "running over TCP
    without encryption" warning every stage printed.
    """
    options: dict = {"kernel_manager_class": stage_kernel_manager(log_path, cwd, env)}
    try:
        with tempfile.TemporaryDirectory(prefix="tulu-kit-kernel-") as folder:
            if os.name != "nt":
                from traitlets.config import Config

                ipc = {"transport": "ipc", "ip": os.path.join(folder, "k")}
                options["config"] = Config({"KernelManager": ipc})
            yield options
    finally:
        if log_path.is_file() and log_path.stat().st_size == 0:
            log_path.unlink()


def execute_stage(
    stage: Stage, output: Path, log_output: bool = False, progress_bar: bool = True, env: dict | None = None
) -> None:
    """Execute one stage's notebook with its parameters; papermill saves ``output`` after every cell. ``env``:
    variables for its kernel, where the environment does not set them."""
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    Path(stage.config.out_dir).mkdir(parents=True, exist_ok=True)
    with _kernel_options(output.with_suffix(".kernel.log"), stage.notebook.parent, env) as options:
        pm.execute_notebook(
            str(stage.notebook),
            str(output),
            parameters=stage.params,
            kernel_name=KERNEL,
            progress_bar=progress_bar,
            log_output=log_output,
            **options,
        )


TRAINING_KINDS = ("sft", "lora", "dpo", "reward", "ppo", "grpo")


def write_stage_configs(recipe: Recipe, folder: str | Path) -> list[Path]:
    """Write each stage's resolved config as ``<folder>/<stage>.yaml``: the flat fields ``tulu-kit <kind> FILE``
    and ``recipes/slurm/train.sbatch`` read, and the parameters file of ``papermill -f FILE``."""
    folder = Path(folder)
    written = []
    for stage in recipe.stages:
        path = folder / f"{stage.name}.yaml"
        nb = stage.notebook.relative_to(stage.notebook.parents[1])
        use = [f"papermill {nb} {recipe.run_dir}/notebooks/{stage.notebook.name} -f {path}"]
        if stage.kind in TRAINING_KINDS:
            use = [
                f"tulu-kit {stage.kind} {path}",
                f"sbatch --nodes=N recipes/slurm/train.sbatch {stage.kind} {path}",
            ]
            use += [f"papermill {nb} OUT.ipynb -f {path}"]
        header = [
            f"# stage '{stage.name}' ({stage.kind}) of {recipe.source}, resolved for {recipe.run_dir}",
            "# use:",
        ]
        header += [f"#   {u}" for u in use]
        atomic_write_text(path, "\n".join(header) + "\n" + yaml.safe_dump(stage.params, sort_keys=False))
        written.append(path)
    return written


def seed_recipes(recipe: Recipe) -> list[Recipe]:
    """A recipe with ``seeds: [1, 2, 3]`` as one recipe per seed, each run into ``<run_dir>/seed-<k>`` with
    ``seed: k`` (every stage's seed and ``${seed}``)."""
    from tulu_kit.config import load_recipe

    return [
        load_recipe(
            recipe.source, [*recipe.overrides, f"seed={k}", "seeds=[]"], run_dir=recipe.run_dir / f"seed-{k}"
        )
        for k in recipe.seeds
    ]


def run_seeds(recipe: Recipe, force: bool = False, log_output: bool = False) -> int:
    """Run the recipe once per seed (``seeds``), then write ``<run_dir>/stage_table.md`` and ``.json``: the toy
    world's per-stage table, mean ± sd over the seeds (:mod:`tulu_kit.toy_eval`)."""
    from tulu_kit import toy_eval

    runs = seed_recipes(recipe)
    atomic_write_json(
        recipe.run_dir / "seeds.json", {"seeds": recipe.seeds, "runs": [str(r.run_dir) for r in runs]}
    )
    for k, run in zip(recipe.seeds, runs):
        print(f"seed {k}: {run.run_dir}", flush=True)
        code = run_recipe(run, force=force, log_output=log_output)
        if code:
            return code
    page, numbers = toy_eval.seed_page([r.run_dir for r in runs])
    if page:
        atomic_write_text(recipe.run_dir / "stage_table.md", page)
        atomic_write_json(recipe.run_dir / "stage_table.json", numbers)
        print(page, flush=True)
    return 0


def run_recipe(recipe: Recipe, force: bool = False, log_output: bool = False) -> int:
    """Run every stage in order (once per seed when the recipe lists ``seeds``); returns the process exit code
    (0 ok, 1 a stage failed, 2 the run folder is in use by another run, 130 interrupted by Ctrl-C, 143 by
    SIGTERM)."""
    if recipe.seeds:
        return run_seeds(recipe, force, log_output)
    try:
        with lock_run_dir(recipe.run_dir), _terminate_as_interrupt():
            return _run_stages(recipe, force, log_output)
    except RunLocked as e:
        print(f"tulu-kit: {e}", file=sys.stderr)
        return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit): handled as a Ctrl-C, exit code 143."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the run holds the folder, SIGTERM raises :class:`Terminated`, so run.json ends "interrupted" and the
    terminal says how to continue, as after a Ctrl-C (only in the main thread, where signals are delivered)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _share_of_cores(recipe: Recipe, below: list[set[int]]) -> list[dict]:
    """Each stage's kernel environment when stages run ``jobs`` at a time (``below``: each stage's readers, directly
    or through others). One that may run beside another (neither reads the other) gets its share of the cores,
    ``cores // jobs`` torch threads: torch's threads spin while they wait, and two kernels of two threads each on
    two cores ran the code evals 5x slower than one at a time. One that runs alone whatever the timing (the
    pretraining, the data, SFT, the report) keeps them all. Decided by the recipe, never by which stage happened
    to end first, so that a seed's numbers do not depend on the timing."""
    n = len(recipe.stages)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = {"OMP_NUM_THREADS": str(max(1, cores // recipe.jobs))}
    alone = [all(j == i or j in below[i] or i in below[j] for j in range(n)) for i in range(n)]
    return [{} if recipe.jobs == 1 or alone[i] else share for i in range(n)]


class _Stop(Exception):
    """A stage failed or was interrupted: the run ends with ``code``."""

    def __init__(self, code: int):
        self.code = code


def _run_stages(recipe: Recipe, force: bool, log_output: bool) -> int:
    atomic_write_text(recipe.run_dir / "config.yaml", yaml.safe_dump(recipe.resolved(), sort_keys=False))
    status = RunStatus(recipe)
    deps = stage_dependencies(recipe.stages, recipe.run_dir)
    below = _readers(deps)

    def to_run(i: int) -> bool:
        """Asked to (``force``), or it did not complete earlier with these parameters and these inputs."""
        return force or not stage_completed(recipe, recipe.stages[i])

    def will_run(i: int) -> None:
        """Stage ``i`` runs: what every stage that reads it, directly or through others, completed earlier is
        stale now, whether or not this run gets that far (a failure, a Ctrl-C): their markers go."""
        for j in below[i]:
            _marker(recipe, recipe.stages[j]).unlink(missing_ok=True)

    try:
        _run_graph(recipe, status, deps, below, to_run, will_run, log_output)
    except _Stop as stop:
        return stop.code
    except KeyboardInterrupt as e:  # between two stages
        return _interrupted(status, [], e).code
    status.set(status="completed")
    print(f"run '{recipe.name}' completed: {recipe.run_dir}", flush=True)
    return 0


def _readers(deps: list[set[int]]) -> list[set[int]]:
    """Each stage's readers, directly or through others (``deps``: the stages each reads; always earlier ones)."""
    below: list[set[int]] = [set() for _ in deps]
    for i in reversed(range(len(deps))):
        for j in deps[i]:
            below[j] |= {i} | below[i]
    return below


def _tag(recipe: Recipe, i: int) -> str:
    return f"[{i + 1}/{len(recipe.stages)}] {recipe.stages[i].name}"


def _skipped(recipe: Recipe, status: RunStatus, tag: str, stage: Stage) -> None:
    print(f"{tag}: completed earlier with the same parameters, skipped", flush=True)
    earlier = json.loads(_marker(recipe, stage).read_text()).get("seconds")
    status.set(stage.name, status="skipped", seconds=earlier, notebook=str(executed_path(recipe, stage)))


def _started(recipe: Recipe, status: RunStatus, tag: str, stage: Stage, output: Path) -> None:
    """Print and record that ``stage`` starts, writing ``output`` (its old marker removed)."""
    print(f"{tag}: running {stage.notebook.relative_to(stage.notebook.parents[1])} -> {output}", flush=True)
    marker = _marker(recipe, stage)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    status.set(stage.name, status="running", notebook=str(output))


def _completed(recipe: Recipe, status: RunStatus, tag: str, stage: Stage, seconds: float) -> None:
    seconds = round(seconds, 1)
    atomic_write_json(
        _marker(recipe, stage), {"status": "completed", "params_hash": params_hash(stage), "seconds": seconds}
    )
    status.set(stage.name, status="completed", seconds=seconds)
    print(f"{tag}: done in {seconds:.1f} s", flush=True)


def _failed(status: RunStatus, stage: Stage, error, output: Path) -> None:
    """A failed cell (``PapermillExecutionError``), or what ended its kernel (a ``DeadKernelError``: killed for
    memory, say), printed and recorded."""
    if hasattr(error, "ename"):
        _print_failure(stage, error, output)
        message = f"{error.ename}: {error.evalue}"
    else:
        message = f"{type(error).__name__}: {error}"
        print(
            f"\nstage '{stage.name}' failed: {message}\npartial executed notebook: {output}", file=sys.stderr
        )
    status.set(stage.name, status="failed", error=message)
    status.set(status="failed", failed_stage=stage.name)


def _interrupted(status: RunStatus, stages: list[tuple[str, Stage, Path]], e: KeyboardInterrupt) -> _Stop:
    how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    for tag, stage, output in stages:
        print(f"\n{tag}: {how}; partial notebook: {output}", file=sys.stderr)
        status.set(stage.name, status="interrupted")
    print(
        "to continue, run the same command again: completed stages are skipped (a training stage with "
        "resume: true goes on from its last checkpoint)",
        file=sys.stderr,
    )
    status.set(status="interrupted", **({"interrupted_stage": stages[0][1].name} if stages else {}))
    return _Stop(143 if isinstance(e, Terminated) else 130)


def _run_graph(recipe: Recipe, status: RunStatus, deps, below, to_run, will_run, log_output: bool) -> None:
    """The stages ``recipe.jobs`` at a time, each in a kernel of its own: each starts, in recipe order, once every
    stage it reads (``deps``) has ended. With ``jobs: 1`` that is recipe order, each stage run in this thread with
    papermill's progress bar; with more, papermill runs in threads (no progress bars, a line as each starts and
    ends). A failure lets the running ones finish and starts no more; Ctrl-C / SIGTERM interrupts the running
    kernels and marks their stages interrupted."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    envs, inline = _share_of_cores(recipe, below), recipe.jobs == 1

    def execute(i: int, output: Path) -> float:
        start = time.time()
        execute_stage(recipe.stages[i], output, log_output=log_output, progress_bar=inline, env=envs[i])
        return time.time() - start

    def launch(i: int, output: Path) -> Future:
        if not inline:
            return pool.submit(execute, i, output)
        future: Future = Future()  # one at a time: here, where a Ctrl-C reaches the kernel's cell
        try:
            future.set_result(execute(i, output))
        except BaseException as e:  # noqa: BLE001 - a failed cell or an interrupt, handled as from a thread
            future.set_exception(e)
        return future

    pending, ended, running, failed = list(range(len(recipe.stages))), set(), {}, False
    pool = ThreadPoolExecutor(max_workers=recipe.jobs, thread_name_prefix="tulu-kit-stage")
    try:
        while True:
            for i in list(pending):  # a stage only reads earlier ones: one pass in order sees every skip
                if failed:
                    break
                if not deps[i] <= ended:
                    continue
                stage, tag = recipe.stages[i], _tag(recipe, i)
                if not to_run(i):
                    pending.remove(i)
                    _skipped(recipe, status, tag, stage)
                    ended.add(i)
                elif len(running) < recipe.jobs:
                    pending.remove(i)
                    will_run(i)
                    output = executed_path(recipe, stage)
                    _started(recipe, status, tag, stage, output)
                    running[launch(i, output)] = (i, tag, stage, output)
                    if inline:  # it has ended: its outcome comes before any later stage is looked at
                        break
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i, tag, stage, output = running[future]
                try:
                    _completed(recipe, status, tag, stage, future.result())
                    ended.add(i)
                except Exception as e:  # a failed cell, or a kernel that died
                    _failed(status, stage, e, output)
                    failed = True
                del running[future]
            if failed and running:
                print(f"waiting for {len(running)} running stage(s) to end", file=sys.stderr, flush=True)
    except KeyboardInterrupt as e:
        _interrupt_kernels(running)
        stopped = []
        for future, (_, tag, stage, output) in running.items():
            if (
                not future.cancelled() and future.exception() is None
            ):  # it ended before the interrupt reached it
                _completed(recipe, status, tag, stage, future.result())
            else:
                stopped.append((tag, stage, output))
        raise _interrupted(status, stopped, e) from None
    except Exception:  # the runner's own bookkeeping failed (a marker, run.json): stop the kernels, not wait
        _interrupt_kernels(running)
        status.set(status="failed")
        raise
    finally:
        pool.shutdown(wait=True)
    if failed:
        raise _Stop(1)


def _interrupt_kernels(running: dict) -> None:
    """Interrupt every stage kernel (SIGINT to its process group, as jupyter_client interrupts one) until the
    running stages have ended: the cell in progress raises KeyboardInterrupt and papermill saves the notebook.
    Sent again every half second, since a kernel ignores SIGINT while it starts or sits between two cells; a
    further Ctrl-C or SIGTERM here changes nothing."""
    import signal
    from concurrent.futures import wait

    while not all(f.done() for f in running):
        for km in list(_LIVE_KERNELS):
            process = getattr(km.provisioner, "process", None)
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGINT)  # its own session: pgid = pid
        with contextlib.suppress(KeyboardInterrupt):
            wait(running, timeout=0.5)
